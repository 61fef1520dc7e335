"""Sequence classification on a real dataset with rnncore.estimators.RNNClassifier.

Default data: the UCI/UCR "Japanese Vowels" set (Kudo, Toyama, Shimbo 1999), bundled with the sktime
package (pip install sktime; no download at run time): nine male speakers uttering the vowels /ae/,
one sequence of 12 LPC cepstrum coefficients per 5 ms frame, 7 to 29 frames long. The task is to
tell the speaker: 9 classes, 270 training and 370 test sequences of *different lengths*, which
RNNClassifier takes as they are (a list of (T_i, 12) arrays, padded internally with lengths).

Without sktime (or with --data digits): scikit-learn's bundled handwritten digits (8x8 images) read
row by row, top to bottom, as sequences of 8 steps with 8 features; 10 classes.

The RNN's cell (LSTM or GRU) and direction are chosen by GridSearchCV (3-fold, training set only).
Baselines: the majority class; a logistic regression on the mean and standard deviation of each
feature over the steps (it ignores the order); a logistic regression on the flattened series (each
sequence resampled by linear interpolation to the median length, so that every sample has the same
number of columns). Output: the test accuracies, and a PNG with the confusion matrix and the
training loss of the chosen model.

    python examples/classify_sequences.py [--data japanese_vowels|digits] [--out DIR] [--seed N] [--threads N]
"""
import argparse
import time

import numpy as np

from rnncore.estimators import RNNClassifier

from _common import add_common_arguments, run_with_threads, save_figure  # examples/_common.py


def load_japanese_vowels():
    """(X_train, y_train, X_test, y_test): lists of (T_i, 12) float arrays and speaker labels."""
    from sktime.datasets import load_japanese_vowels as load

    def split(name):
        X, y = load(split=name, return_type="df-list")
        return [np.asarray(x, dtype=np.float64) for x in X], np.asarray(y)

    Xtr, ytr = split("train")
    Xte, yte = split("test")
    return Xtr, ytr, Xte, yte, ("Japanese Vowels (speaker of an /ae/ utterance, 9 classes, "
                                "7-29 frames x 12 LPC coefficients)")


def load_digits_rows():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    X = d.images / 16.0                          # (n, 8 rows = steps, 8 columns = features)
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=0.3, random_state=0, stratify=d.target)
    return Xtr, ytr, Xte, yte, "scikit-learn digits read row by row (8 steps x 8 features, 10 classes)"


def resample(seqs, length):
    """Each (T_i, F) sequence linearly interpolated to `length` steps, flattened: (n, length * F)."""
    out = []
    for s in seqs:
        s = np.asarray(s, dtype=np.float64)
        src = np.linspace(0, 1, len(s))
        dst = np.linspace(0, 1, length)
        out.append(np.stack([np.interp(dst, src, s[:, j]) for j in range(s.shape[1])], axis=1).ravel())
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["japanese_vowels", "digits"], default=None,
                    help="default: japanese_vowels if sktime is installed, else digits")
    add_common_arguments(ap)
    run_with_threads(run, ap.parse_args())


def run(args):

    data = args.data
    if data is None:
        try:
            import sktime  # noqa: F401
            data = "japanese_vowels"
        except ImportError:
            print("sktime is not installed (pip install sktime for the Japanese Vowels data); "
                  "using scikit-learn's digits instead")
            data = "digits"
    Xtr, ytr, Xte, yte, title = load_japanese_vowels() if data == "japanese_vowels" else load_digits_rows()
    lens = np.array([len(x) for x in Xtr])
    print(f"data: {title}")
    print(f"      {len(Xtr)} training / {len(Xte)} test sequences, lengths {lens.min()}-{lens.max()}, "
          f"{np.asarray(Xtr[0]).shape[-1]} features per step")

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels, counts = np.unique(ytr, return_counts=True)
    majority = float(np.mean(yte == labels[counts.argmax()]))
    L = int(np.median(lens))
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    logreg.fit(resample(Xtr, L), ytr)
    acc_lr = logreg.score(resample(Xte, L), yte)

    # order-free baseline: mean and standard deviation of each feature over the steps
    bag = lambda S: np.array([np.r_[np.mean(s, 0), np.std(s, 0)] for s in S])  # noqa: E731
    acc_bag = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(bag(Xtr), ytr) \
        .score(bag(Xte), yte)

    # the estimator is a scikit-learn estimator: choose the cell and the direction by 3-fold
    # cross-validation on the training set only, then refit on all of it (GridSearchCV's refit)
    from sklearn.model_selection import GridSearchCV
    t0 = time.perf_counter()
    search = GridSearchCV(
        RNNClassifier(hidden_size=64, max_iter=40, batch_size=16, lr=5e-3, clip=1.0, random_state=args.seed),
        {"cell": ["lstm", "gru"], "bidirectional": [False, True]}, cv=3)
    search.fit(list(Xtr), ytr)
    fit_s = time.perf_counter() - t0
    clf = search.best_estimator_
    y_pred = clf.predict(list(Xte))
    acc = float(np.mean(y_pred == yte))
    print("\n3-fold cross-validation on the training set:")
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        print(f"  cell={params['cell']:4s} bidirectional={params['bidirectional']!s:5s}  {100 * score:5.1f}%")
    best = f"{clf.cell}{', bidirectional' if clf.bidirectional else ''}"

    print(f"\n{'model':62s} test accuracy")
    print(f"{'majority class':62s} {100 * majority:6.1f}%")
    print(f"{'logistic regression, mean and std of each feature (no order)':62s} {100 * acc_bag:6.1f}%")
    print(f"{f'logistic regression, series resampled to {L} steps, flattened':62s} {100 * acc_lr:6.1f}%")
    print(f"{f'RNNClassifier({best}), chosen by CV':62s} {100 * acc:6.1f}%"
          f"   (search + refit {fit_s:.1f} s)")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written")
        return
    cm = confusion_matrix(yte, y_pred, labels=clf.classes_)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    im = ax1.imshow(cm, cmap="Blues")
    ax1.set_xticks(range(len(clf.classes_)), clf.classes_)
    ax1.set_yticks(range(len(clf.classes_)), clf.classes_)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax1.text(j, i, cm[i, j], ha="center", va="center", fontsize=8,
                         color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("true")
    ax1.set_title(f"RNNClassifier on the test set: {100 * acc:.1f}% "
                  f"(logistic regression {100 * acc_lr:.1f}%)", fontsize=10)
    fig.colorbar(im, ax=ax1, fraction=0.046)
    ax2.plot(np.arange(1, len(clf.loss_curve_) + 1), clf.loss_curve_)
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("mean training cross-entropy")
    ax2.set_title("training loss", fontsize=10)
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, args, "classify_sequences.png")


if __name__ == "__main__":
    main()
