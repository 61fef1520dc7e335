"""The vanishing gradient, measured: a tanh RNN against an LSTM on a task that needs long memory.

Task (no download; the data is drawn here from a seeded generator): each sequence starts with its
label as a sign, x_1 = +1 or -1, followed by T-1 distractor steps of Gaussian noise; the class is
the sign of x_1. A model must carry one number across all T steps. Chance is 50 %.

For each cell the script builds a SequenceModel (many_to_one head, same hidden size), measures
‖∂L/∂h_t‖ for every step t with rnncore.diagnostics (float64 reference, total gradient of the loss
with respect to each hidden state) at initialisation, trains it briefly (Adam, gradient clipping),
measures again, and reports the test accuracy. Output: the ratio ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ (how much of
the gradient reaches the first step: the one that holds the label), the accuracies, and a PNG of
‖∂L/∂h_t‖ against t on a log scale.

    python examples/gradient_flow.py [--steps 100] [--epochs 25] [--out DIR] [--seed N] [--threads N]
"""
import argparse
import time

import numpy as np

from rnncore.data import Batch
from rnncore.diagnostics import diagnose
from rnncore.models import SequenceModel
from rnncore.optim import Adam
from rnncore.trainer import Trainer

from _common import add_common_arguments, run_with_threads, save_figure  # examples/_common.py


def make_data(n, T, rng):
    """(X (T, n, 1) float32 time-major, y (n,) int64): x_1 = ±1 gives the class, then T-1 noise steps."""
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((T, n, 1)).astype(np.float32)
    X[0, :, 0] = 2.0 * y - 1.0
    return X, y.astype(np.int64)


def batches(X, y, batch_size):
    return [Batch(X[:, s:s + batch_size], y[s:s + batch_size], None) for s in range(0, X.shape[1], batch_size)]


def accuracy(model, X, y):
    return float((model.predict(X).argmax(axis=1) == y).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="sequence length T (default 100)")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--train", type=int, default=2000, help="training sequences")
    add_common_arguments(ap)
    run_with_threads(run, ap.parse_args())


def run(args):

    rng = np.random.default_rng(args.seed)
    T = args.steps
    Xtr, ytr = make_data(args.train, T, rng)
    Xte, yte = make_data(1000, T, rng)
    Xdiag, ydiag = Xte[:, :256], yte[:256]          # the batch the diagnostics look at

    # the LSTM twice: with PyTorch's default initialisation, and with the forget gate's bias at 5
    # (σ(5) = 0.993: the cell path c_t = f * c_{t-1} + ... starts open, 0.993^100 = 0.5)
    cells = {"tanh RNN": dict(cell="rnn"),
             "LSTM": dict(cell="lstm"),
             "LSTM, forget bias 5": dict(cell="lstm", rnn_options={"forget_bias": 5.0})}
    reports, results = {}, {}
    print(f"task: the class is the sign of x_1, followed by {T - 1} noise steps; chance = 50.0 %")
    for name, kw in cells.items():
        t0 = time.perf_counter()
        model = SequenceModel(hidden_size=args.hidden, input_size=1, output_size=2, head="many_to_one",
                              seed=args.seed, **kw)
        before = diagnose(model, Xdiag, ydiag)
        opt = Adam(model.params, model.grads, lr=1e-2, clip_norm=1.0)
        Trainer(model, opt, loss="cross_entropy", seed=args.seed, progress=False).fit(
            batches(Xtr, ytr, 32), epochs=args.epochs)
        after = diagnose(model, Xdiag, ydiag)
        reports[name] = (before, after)
        results[name] = (before.ratio(), after.ratio(), accuracy(model, Xte, yte), time.perf_counter() - t0)

    print(f"\n{'model':20s} {'|dL/dh_1|/|dL/dh_T| at init':>28s} {'after training':>15s} "
          f"{'test accuracy':>14s} {'time':>7s}")
    for name, (r0, r1, acc, sec) in results.items():
        print(f"{name:20s} {r0:28.3e} {r1:15.3e} {100 * acc:13.1f}% {sec:6.1f}s")
    print(f"{'baseline':20s} {'':28s} {'':15s} {100 * max(yte.mean(), 1 - yte.mean()):13.1f}%  "
          f"(majority class)")
    print("\nsaturated activations after training (share of |tanh| > 0.95, σ < 0.05 or σ > 0.95):")
    for name, (_, after) in reports.items():
        sat = after.saturation(threshold=0.05)[(0, 0)]
        print(f"  {name:20s} " + ", ".join(f"{g} {100 * v['saturated']:.0f}%" for g, v in sat.items()))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, which, title in ((axes[0], 0, "at initialisation"), (axes[1], 1, f"after {args.epochs} epochs")):
        for name, pair in reports.items():
            n = pair[which].dh_norm[-1, 0]
            ax.semilogy(np.arange(1, T + 1), np.where(n > 0, n, np.nan),
                        label=f"{name} (ratio {pair[which].ratio():.1e})")
        ax.set_title(f"{title}")
        ax.set_xlabel("time step t (the label is at t = 1)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel(r"$\|\partial L / \partial h_t\|$  (batch of 256)")
    fig.suptitle(f"Gradient of the loss with respect to each hidden state, T = {T}")
    save_figure(fig, args, "gradient_flow.png")


if __name__ == "__main__":
    main()
