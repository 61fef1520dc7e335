"""Seed 001's loop, trained: a stacked GRU against a gated-feedback GRU (Chung et al. 2015) of the same
parameter count, on the same text for the same training time.

Data: the default corpus of `rnncore train` (Python source from the standard library, no download),
the last 10% held out. Both models are SequenceModels (character embedding -> 3 recurrent layers ->
softmax over characters), trained with the Trainer (Adam, clipping, truncated BPTT, the state carried
across chunks) on the same batches in the same order. The GF-GRU's hidden size is chosen so that its
parameter count is the stacked GRU's (its layers also read every layer's state at t-1, through
L x L global reset gates, so at equal size it has more weights). Each model trains for --seconds of
wall time (evaluation excluded); validation bits per character is measured every --eval-every steps.

Output: both models' parameter counts, steps, time and validation bits/char; a PNG of both
validation curves against training time, and a drawing of the unrolled graphs (3 layers x 4 steps):
the stacked RNN's grid, and the gated-feedback RNN's, which is "not a grid" (seed 001).

    python examples/feedback.py [--seconds 120] [--hidden 128] [--layers 3] [--out DIR] [--seed N]
"""
import argparse
import time

import numpy as np

from rnncore.models import SequenceModel
from rnncore.training.data import CharVocab, TextStreams, split_text, stdlib_corpus, unigram_entropy
from rnncore.training.optim import Adam
from rnncore.training.trainer import Trainer

from _common import add_common_arguments, run_with_threads, save_figure  # examples/_common.py

LN2 = np.log(2.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="training wall time per model (default 120)")
    ap.add_argument("--hidden", type=int, default=128, help="the stacked GRU's hidden size (default 128)")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--embedding", type=int, default=32)
    ap.add_argument("--max-chars", type=int, default=400_000, help="characters of the corpus to use")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--tbptt", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=50, help="steps between validation measurements")
    ap.add_argument("--val-chars", type=int, default=20_000)
    add_common_arguments(ap)
    run_with_threads(run, ap.parse_args())


def build(cell, hidden, args, vocab_size):
    return SequenceModel(cell, hidden_size=hidden, num_layers=args.layers, vocab_size=vocab_size,
                         embedding_dim=args.embedding, seed=args.seed)


def matched_hidden(args, vocab_size, target):
    """The GF-GRU hidden size whose parameter count is closest to target."""
    best = None
    for h in range(4, args.hidden + 1):
        n = build("gf-gru", h, args, vocab_size).num_params
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (h, n)
    return best


def train_for(model, train, val, args):
    """Train until args.seconds of training time; returns [(seconds, step, val bits/char)] and the steps."""
    opt = Adam(model.params, model.grads, lr=args.lr, clip_norm=1.0)
    trainer = Trainer(model, opt, tbptt=args.tbptt, seed=args.seed)
    curve = [(0.0, 0, trainer.evaluate(val) / LN2)]
    spent = 0.0
    while spent < args.seconds:
        t0 = time.perf_counter()
        trainer.fit(train, max_steps=trainer.step + args.eval_every)
        spent += time.perf_counter() - t0
        curve.append((spent, trainer.step, trainer.evaluate(val) / LN2))
    return curve


def draw_unrolled(ax, L, T, feedback):
    """Nodes h^j_t on a grid of steps (x) and layers (y); bottom-up edges, the recurrence of each
    layer, and with feedback every layer at t-1 into every layer at t (through a gate g^{i->j})."""
    import matplotlib.patches as mpatches
    for t in range(T):
        ax.annotate("", xy=(t, 0.6), xytext=(t, 0.0),
                    arrowprops=dict(arrowstyle="-|>", color="0.4", lw=1.2))
        ax.text(t, -0.12, f"$x_{t + 1}$", ha="center", va="top", fontsize=9)
        for j in range(L):
            y = j + 1
            if j > 0:      # from the layer below at the same step
                ax.annotate("", xy=(t, y - 0.17), xytext=(t, y - 1 + 0.17),
                            arrowprops=dict(arrowstyle="-|>", color="0.4", lw=1.2))
            if t > 0:
                for i in range(L):
                    if i != j and not feedback:
                        continue
                    src, dst = (t - 1 + 0.17, i + 1), (t - 0.17, y)
                    color = "C0" if i == j else ("C3" if i > j else "C2")
                    ax.annotate("", xy=dst, xytext=src, arrowprops=dict(
                        arrowstyle="-|>", color=color, lw=1.0 if i != j else 1.4,
                        connectionstyle="arc3,rad=0.0", alpha=0.9))
                    if feedback:   # the global reset gate on this connection
                        ax.plot(src[0] + 0.55 * (dst[0] - src[0]), src[1] + 0.55 * (dst[1] - src[1]), "o",
                                ms=3, color=color)
            ax.add_patch(mpatches.Circle((t, y), 0.17, fc="white", ec="black", zorder=3))
            ax.text(t, y, f"$h^{j + 1}_{t + 1}$", ha="center", va="center", fontsize=8, zorder=4)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(-0.4, L + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")


def run(args):
    text, _ = stdlib_corpus(args.max_chars)
    train_text, val_text = split_text(text, 0.1, max_val_chars=args.val_chars)
    vocab = CharVocab.from_text(text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    batch = max(1, min(args.batch_size, len(train_ids) // (2 * args.tbptt)))
    train = TextStreams(train_ids, batch)
    val = TextStreams(val_ids, max(1, min(batch, (len(val_ids) - 1) // 2)), random_offset=False)
    print(f"corpus: {len(text):,} characters of the standard library's source, vocabulary {len(vocab)}; "
          f"validation {len(val_ids):,} characters")
    print(f"unigram entropy: {unigram_entropy(train_ids, len(vocab)):.3f} bits/char")

    V = len(vocab)
    stacked = build("gru", args.hidden, args, V)
    h_gf, n_gf = matched_hidden(args, V, stacked.num_params)
    gf = build("gf-gru", h_gf, args, V)
    results = {}
    for name, model in ((f"stacked GRU ({args.layers} x {args.hidden})", stacked),
                        (f"GF-GRU ({args.layers} x {h_gf})", gf)):
        print(f"\n{name}: {model.num_params:,} parameters; training for {args.seconds:g} s ...", flush=True)
        curve = train_for(model, train, val, args)
        results[name] = (model.num_params, curve)
        shown = -1.0
        for i, (s, step, bits) in enumerate(curve[1:]):     # about ten lines
            if s - shown >= args.seconds / 10 or i == len(curve) - 2:
                print(f"  {s:7.1f} s  step {step:5d}  validation {bits:.3f} bits/char", flush=True)
                shown = s

    print("\nmodel                         parameters   steps   train s   validation bits/char")
    for name, (n, curve) in results.items():
        s, step, bits = curve[-1]
        best = min(c[2] for c in curve)
        print(f"{name:<30}{n:>10,}{step:>8}{s:>10.1f}   {bits:.3f} (best {best:.3f})")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(12, 8))
    ax = fig.add_subplot(2, 1, 1)
    for name, (n, curve) in results.items():
        c = np.array(curve)
        ax.plot(c[:, 0], c[:, 2], marker="o", ms=3, label=f"{name}, {n:,} parameters")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation bits / character")
    ax.set_title("same parameter count, same text, same time")
    ax.legend()
    ax.grid(alpha=0.3)
    for k, (feedback, title) in enumerate([(False, "stacked RNN, unrolled: a grid"),
                                           (True, "gated-feedback RNN, unrolled: not a grid\n"
                                                  "blue: own layer; green: from a lower layer at t-1;\n"
                                                  "red: top-down, from a higher one; dots: global reset gates")]):
        ax = fig.add_subplot(2, 2, 3 + k)
        draw_unrolled(ax, 3, 4, feedback)
        ax.set_title(title, fontsize=9)
    save_figure(fig, args, "feedback.png")


if __name__ == "__main__":
    main()
