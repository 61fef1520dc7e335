"""Accuracy, not speed: rnncore's RNNClassifier on five UCR/UEA classification sets, against 1-NN
baselines computed here and the published accuracies of 1-NN-DTW, FCN and ResNet.

    python benchmarks/accuracy.py [--datasets ArrowHead,GunPoint,...] [--networks 5] [--seeds 5]
                                  [--cv-folds 5] [--cv-repeats 5] [--selection one-se|best]
                                  [--json out.json] [--threads 1]

Data: the official train/test splits bundled inside sktime's wheel (sktime.datasets, no download;
``pip install -e ".[accuracy]"``): ArrowHead, GunPoint, ItalyPowerDemand (univariate, UCR),
BasicMotions and JapaneseVowels (multivariate, UEA; JapaneseVowels has sequences of 7-29 steps).

The classifier is a seed ensemble (`SeedEnsemble`, below): `--networks` RNNClassifiers with the
same settings and different random_state values, their class probabilities averaged (as
InceptionTime averages 5 networks). Single networks trained on 36 to 270 sequences vary by up to
20 points of test accuracy with the seed; the average of a few varies much less.

Protocol. For each set, every setting of a small grid per set (stride, pooling, bidirectional;
below) is scored by GridSearchCV with 5-fold stratified cross-validation repeated `--cv-repeats`
times on the TRAINING split only, every fit of it an ensemble of `--networks` networks (base seed
0), and one setting is chosen from those scores by the one-standard-error rule
(`one_standard_error`, below; `--selection best` takes the highest CV accuracy instead). The
chosen settings are refitted on the whole training split as `--seeds` ensembles (base seeds 0, 1,
...: network i of base seed s has random_state 100 s + i) and each is scored once on the test
split; mean, min and max over the ensembles are reported, and the accuracy of their networks
alone. The test split is never looked at before that.

The grid ensemble (run 6 on, the headline): not one setting but all of them. Every setting of the
grid is refitted as the same `--seeds` ensembles, and for each base seed the settings' class
probabilities are averaged with CAWPE's weights (`grid_weights`: the mean CV accuracy to the 4th
power, Large et al. 2019), the most probable class predicted. On training sets of 36 to 67 series
the CV cannot tell the settings apart (its standard error is 0.02-0.08), so any rule that picks
one setting picks partly by luck; weighting them all by their CV accuracy keeps what the CV knows
without betting on its winner. The one-SE setting is reported beside it from the same fits.

The one-standard-error rule (Breiman, Friedman, Olshen and Stone, "Classification and Regression
Trees", 1984, section 3.4.3; Hastie, Tibshirani and Friedman, "The Elements of Statistical
Learning", 2nd ed., section 7.10): a* is the highest mean CV accuracy of the grid, and its standard
error SE = sqrt(a* (1 - a*) / n), n the number of training sequences (each repeat of the CV
predicts every training sequence once, so its accuracy is a proportion over n; repeating the CV
averages out the choice of folds, not the sampling noise of n sequences). Every setting whose mean
CV accuracy is >= a* - SE is as good as the best as far as the training split can tell, and the
SIMPLEST of them is chosen: the one with the fewest trainable parameters of ONE network (counted on
the model the estimator builds; an ensemble of k networks has k times as many, which does not
change the order), ties broken by the higher mean CV accuracy. On training sets of 36 to 270
sequences the best CV score is partly luck; the simpler model is the one less likely to have won by
fitting the folds.

Computed baselines: 1-NN with Euclidean distance, and 1-NN with DTW (full window, squared
point-to-point cost summed over the channels, i.e. DTW_D for the multivariate sets), both on the
data as bundled. JapaneseVowels has unequal lengths: 1-NN-ED compares the sequences linearly
resampled to 29 steps; DTW compares them as they are.

Published baselines (cited in benchmarks/README.md): the UCR archive's 1-NN-DTW (Dau et al. 2019),
the UEA archive's 1-NN-DTW_D / DTW_I (Bagnall et al. 2018), and FCN / ResNet (Fawaz et al. 2019,
mean of 10 runs).

Fit times are wall-clock on the machine of the run (shared: see README). Nothing here is a test.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

# the grids: small, so that the whole run fits in minutes on 2 shared cores; `stride` makes a long
# series short (ArrowHead's 251 steps -> 32 or 16), `pooling` reads every step
COMMON = dict(cell="gru", hidden_size=32, max_iter=200, n_iter_no_change=25, lr=0.01, batch_size=16)
BOTH = {"bidirectional": [False, True]}
GRIDS = {
    "ArrowHead": {"stride": [8, 16], "pooling": ["mean", "attention"], **BOTH},
    "GunPoint": {"stride": [5, 10], "pooling": ["mean", "attention"], **BOTH},
    "ItalyPowerDemand": {"stride": [1, 2], "pooling": ["mean", "attention"], **BOTH},
    "BasicMotions": {"stride": [4, 10], "pooling": ["mean", "max"], **BOTH},
    "JapaneseVowels": {"stride": [1, 2], "pooling": ["last", "mean"], **BOTH},
}
DATASETS = list(GRIDS)


class SeedEnsemble(ClassifierMixin, BaseEstimator):
    """`n_networks` RNNClassifiers with the same settings, network i seeded random_state * 100 + i
    (base seed 0: random_state 0, 1, ..., n_networks - 1), averaged: predict_proba is the mean of the
    networks' class probabilities, predict its argmax over classes_. The parameters are those of
    RNNClassifier that COMMON and the grids set (defaults: COMMON's), so GridSearchCV searches and
    clones it as it would one RNNClassifier; X is passed through as it is (arrays or lists of
    sequences of unequal lengths)."""

    def __init__(self, cell=COMMON["cell"], hidden_size=COMMON["hidden_size"], stride=1, pooling="last",
                 bidirectional=False, max_iter=COMMON["max_iter"], n_iter_no_change=COMMON["n_iter_no_change"],
                 lr=COMMON["lr"], batch_size=COMMON["batch_size"], n_networks=5, random_state=0):
        self.cell = cell
        self.hidden_size = hidden_size
        self.stride = stride
        self.pooling = pooling
        self.bidirectional = bidirectional
        self.max_iter = max_iter
        self.n_iter_no_change = n_iter_no_change
        self.lr = lr
        self.batch_size = batch_size
        self.n_networks = n_networks
        self.random_state = random_state

    def network_params(self):
        """The RNNClassifier parameters of every network (all but n_networks and the seed)."""
        params = self.get_params()
        del params["n_networks"], params["random_state"]
        return params

    def fit(self, X, y):
        from rnncore.estimators import RNNClassifier
        if not isinstance(self.random_state, (int, np.integer)) or not 0 <= self.random_state:
            raise ValueError(f"random_state: expected an int >= 0 (the base seed), got {self.random_state!r}")
        if not isinstance(self.n_networks, (int, np.integer)) or not 1 <= self.n_networks <= 100:
            raise ValueError(f"n_networks: expected an int in 1..100, got {self.n_networks!r}")
        self.networks_ = [RNNClassifier(**self.network_params(), random_state=100 * self.random_state + i).fit(X, y)
                          for i in range(self.n_networks)]
        self.classes_ = self.networks_[0].classes_
        return self

    def predict_proba(self, X):
        return np.mean([net.predict_proba(X) for net in self.networks_], axis=0)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def load(name):
    """(X_train, y_train, X_test, y_test): (n, T, F) arrays, or lists of (T_i, F) for JapaneseVowels."""
    from sktime.datasets import load_UCR_UEA_dataset

    def split(part):
        if name == "JapaneseVowels":
            X, y = load_UCR_UEA_dataset(name, split=part, return_type="df-list")
            return [np.asarray(x, dtype=np.float64) for x in X], np.asarray(y)
        X, y = load_UCR_UEA_dataset(name, split=part, return_type="numpy3D")
        return np.ascontiguousarray(np.asarray(X, dtype=np.float64).transpose(0, 2, 1)), np.asarray(y)

    return (*split("train"), *split("test"))


def resample(seqs, length):
    """Each (T_i, F) sequence linearly interpolated to `length` steps: (n, length, F)."""
    out = []
    for s in seqs:
        src, dst = np.linspace(0, 1, len(s)), np.linspace(0, 1, length)
        out.append(np.stack([np.interp(dst, src, s[:, j]) for j in range(s.shape[1])], axis=1))
    return np.array(out)


def one_nn_euclidean(Xtr, ytr, Xte, yte):
    if isinstance(Xtr, list):
        L = max(len(s) for s in Xtr + Xte)
        Xtr, Xte = resample(Xtr, L), resample(Xte, L)
    A, B = Xte.reshape(len(Xte), -1), Xtr.reshape(len(Xtr), -1)
    # ‖a - b‖² = ‖a‖² - 2 a·b + ‖b‖²
    d = (A * A).sum(1)[:, None] - 2 * A @ B.T + (B * B).sum(1)[None]
    return float(np.mean(ytr[d.argmin(axis=1)] == yte))


def dtw_distances(Xte, Xtr):
    """Full-window DTW between every test and training sequence, (n_test, n_train).

    D[i, j] = c(i, j) + min(D[i-1, j-1], D[i-1, j], D[i, j-1]),  c(i, j) = ‖a_i - b_j‖² (all
    channels), the distance D[L_a - 1, L_b - 1]. Vectorised over all pairs, one (i, j) cell at a
    time; sequences of unequal lengths are padded and each pair read at its own end (a cell only
    depends on cells above and to its left, so padding never reaches it)."""
    def pad(seqs):
        L = np.array([len(s) for s in seqs])
        out = np.zeros((len(seqs), L.max(), seqs[0].shape[1]))
        for k, s in enumerate(seqs):
            out[k, :len(s)] = s
        return out, L
    A, La = pad(list(Xte))
    B, Lb = pad(list(Xtr))
    na, nb = len(A), len(B)
    Ta, Tb = A.shape[1], B.shape[1]
    result = np.empty((na, nb))
    prev = np.full((Tb, na, nb), np.inf)
    for i in range(Ta):
        # c(i, j) for every pair: (Tb, na, nb)
        cost = ((A[None, :, i, None, :] - B.transpose(1, 0, 2)[:, None, :, :]) ** 2).sum(-1)
        cur = np.empty_like(prev)
        for j in range(Tb):
            if i == 0 and j == 0:
                best = 0.0
            elif i == 0:
                best = cur[j - 1]
            elif j == 0:
                best = prev[0]
            else:
                best = np.minimum(np.minimum(prev[j - 1], prev[j]), cur[j - 1])
            cur[j] = cost[j] + best
        ends = (La - 1 == i)
        if ends.any():
            result[ends] = cur[Lb - 1, :, np.arange(nb)].T[ends]
        prev = cur
    return result


def one_nn_dtw(Xtr, ytr, Xte, yte):
    return float(np.mean(ytr[dtw_distances(Xte, Xtr).argmin(axis=1)] == yte))


def n_parameters(settings, X, y):
    """Trainable parameters of the model RNNClassifier(**COMMON, **settings) builds on (X, y): the
    sizes of its weights after one epoch (the count does not depend on training)."""
    from rnncore.estimators import RNNClassifier
    clf = RNNClassifier(**{**COMMON, **settings, "max_iter": 1, "random_state": 0}).fit(X, y)
    return int(sum(p.size for p in clf.model_.params.values()))


def one_standard_error(means, n_params, n):
    """Index of the setting chosen by the one-standard-error rule (module docstring): among the
    settings whose mean CV accuracy is >= a* - sqrt(a* (1 - a*) / n), a* the best mean, the one with
    the fewest parameters, ties broken by the higher mean. Returns (index, a* - SE)."""
    means = np.asarray(means, dtype=np.float64)
    best = means.max()
    threshold = best - np.sqrt(best * (1 - best) / n)
    candidates = np.flatnonzero(means >= threshold - 1e-12)
    return int(min(candidates, key=lambda i: (n_params[i], -means[i]))), float(threshold)


def grid_weights(means, alpha=4.0):
    """The grid ensemble's weights: CAWPE (Large, Lines and Bagnall, "A probabilistic classifier
    ensemble weighting scheme based on cross-validated accuracy estimates", Data Mining and
    Knowledge Discovery 33, 2019; the scheme of HIVE-COTE), each member weighted by its mean CV
    accuracy to the power alpha = 4, the paper's value, normalised to sum to 1."""
    w = np.asarray(means, dtype=np.float64) ** alpha
    return w / w.sum()


def run(name, networks, seeds, cv_folds, cv_repeats, selection, log):
    from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold

    Xtr, ytr, Xte, yte = load(name)
    row = {"dataset": name, "n_train": len(Xtr), "n_test": len(Xte)}
    t0 = time.perf_counter()
    row["1nn_euclidean"] = one_nn_euclidean(Xtr, ytr, Xte, yte)
    row["1nn_dtw_computed"] = one_nn_dtw(Xtr, ytr, Xte, yte)
    log(f"{name}: 1-NN ED {row['1nn_euclidean']:.3f}, 1-NN DTW {row['1nn_dtw_computed']:.3f} "
        f"({time.perf_counter() - t0:.0f} s)")

    search = GridSearchCV(SeedEnsemble(**COMMON, n_networks=networks, random_state=0), GRIDS[name],
                          cv=RepeatedStratifiedKFold(n_splits=cv_folds, n_repeats=cv_repeats, random_state=0),
                          refit=False)
    t0 = time.perf_counter()
    search.fit(Xtr, ytr)
    row["cv_seconds"] = time.perf_counter() - t0
    res = search.cv_results_
    settings, means = res["params"], res["mean_test_score"]
    n_params = [n_parameters(p, Xtr, ytr) for p in settings]
    if selection == "one-se":
        chosen, row["one_se_threshold"] = one_standard_error(means, n_params, len(Xtr))
    else:
        chosen = int(np.argmax(means))
    row["chosen"] = settings[chosen]
    row["cv_accuracy"] = float(means[chosen])
    row["cv_best_accuracy"] = float(means.max())
    row["cv_table"] = [dict(settings=p, mean=float(m), std=float(sd), n_params=k)
                       for p, m, sd, k in zip(settings, means, res["std_test_score"], n_params)]
    for r in row["cv_table"]:
        log(f"{name}:   {r['settings']}: CV {r['mean']:.3f} (std over folds {r['std']:.3f}), "
            f"{r['n_params']} parameters per network")
    rule = (f"one-SE rule: fewest parameters with CV >= {row['one_se_threshold']:.3f}"
            if selection == "one-se" else "highest CV accuracy")
    log(f"{name}: chose {row['chosen']} (CV accuracy {row['cv_accuracy']:.3f}, best {row['cv_best_accuracy']:.3f}; "
        f"{rule}; {row['cv_seconds']:.0f} s for {len(settings)} settings x {cv_folds} folds x {cv_repeats} "
        f"x {networks} networks)")

    # every setting refitted as `seeds` ensembles: the chosen one's are the one-SE classifier, all of
    # them together (weighted by CAWPE, `grid_weights`) the grid ensemble
    weights = grid_weights(means)
    row["grid_weights"] = [float(w) for w in weights]
    accs, fit_s, single, epochs, grid_accs, grid_fit_s = [], [], [], [], [], []
    setting_accs = [[] for _ in settings]
    for seed in range(seeds):
        proba, grid_t = 0.0, 0.0
        for k, p in enumerate(settings):
            ens = SeedEnsemble(**COMMON, **p, n_networks=networks, random_state=seed)
            t0 = time.perf_counter()
            ens.fit(Xtr, ytr)
            t_k = time.perf_counter() - t0
            grid_t += t_k
            p_k = ens.predict_proba(Xte)
            proba = proba + weights[k] * p_k
            setting_accs[k].append(float(np.mean(ens.classes_[p_k.argmax(axis=1)] == yte)))
            if k == chosen:
                fit_s.append(t_k)
                accs.append(setting_accs[k][-1])
                # the ensemble's networks alone (the single-network figures of the earlier runs)
                single += [float(np.mean(net.predict(Xte) == yte)) for net in ens.networks_]
                epochs += [net.n_iter_ for net in ens.networks_]
        grid_fit_s.append(grid_t)
        grid_accs.append(float(np.mean(ens.classes_[np.argmax(proba, axis=1)] == yte)))
        log(f"{name}: base seed {seed}: grid ensemble {grid_accs[-1]:.3f} (fit {grid_t:.1f} s); chosen setting "
            f"{accs[-1]:.3f}, its networks alone {', '.join(f'{a:.3f}' for a in single[-networks:])} "
            f"({epochs[-networks:]} epochs)")
    row.update(test_accuracy=accs, mean_accuracy=float(np.mean(accs)), single_accuracy=single,
               mean_single_accuracy=float(np.mean(single)), fit_seconds=fit_s, epochs=epochs,
               grid_test_accuracy=grid_accs, grid_mean_accuracy=float(np.mean(grid_accs)),
               grid_fit_seconds=grid_fit_s, setting_test_accuracy=setting_accs)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--networks", type=int, default=5, help="networks per ensemble (SeedEnsemble)")
    ap.add_argument("--seeds", type=int, default=5,
                    help="refits of the chosen settings, as ensembles with base seeds 0, 1, ...")
    ap.add_argument("--cv-folds", type=int, default=5, help="folds of the stratified cross-validation")
    ap.add_argument("--cv-repeats", type=int, default=5, help="repeats of the cross-validation")
    ap.add_argument("--selection", choices=["one-se", "best"], default="one-se",
                    help="one-se: the simplest setting within one standard error of the best CV "
                         "accuracy (module docstring); best: the highest CV accuracy")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--threads", type=int, default=1, help="rnncore's threads (default 1)")
    args = ap.parse_args()
    try:
        import sktime  # noqa: F401
    except ImportError:
        sys.exit('benchmarks/accuracy.py needs sktime (its bundled data): pip install -e ".[accuracy]"')
    import rnncore
    rnncore.set_num_threads(args.threads)

    def log(msg):
        print(msg, flush=True)

    rows = []
    for name in args.datasets.split(","):
        if name not in GRIDS:
            sys.exit(f"--datasets: expected names among {DATASETS}, got {name!r}")
        rows.append(run(name, args.networks, args.seeds, args.cv_folds, args.cv_repeats, args.selection, log))
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump({"common": COMMON, "grids": GRIDS, "networks": args.networks, "cv_folds": args.cv_folds,
                           "cv_repeats": args.cv_repeats, "selection": args.selection, "rows": rows},
                          f, indent=1)
            os.replace(args.json + ".tmp", args.json)
    print()
    print(f"| data set | grid ensemble, CAWPE (mean of {args.seeds}; min-max) | fit s | one-SE setting, ensemble of "
          f"{args.networks} (mean; min-max) | its networks alone (mean) | chosen by CV | fit s | 1-NN ED | "
          "1-NN DTW (computed) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        grid, one = r["grid_test_accuracy"], r["test_accuracy"]
        print(f"| {r['dataset']} | {np.mean(grid):.3f} ({min(grid):.3f}-{max(grid):.3f}) | "
              f"{np.mean(r['grid_fit_seconds']):.1f} | {np.mean(one):.3f} ({min(one):.3f}-{max(one):.3f}) | "
              f"{r['mean_single_accuracy']:.3f} | {r['chosen']} | {np.mean(r['fit_seconds']):.1f} | "
              f"{r['1nn_euclidean']:.3f} | {r['1nn_dtw_computed']:.3f} |")


if __name__ == "__main__":
    main()
