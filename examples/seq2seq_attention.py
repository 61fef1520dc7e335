"""Sequence to sequence with attention (rnncore.seq2seq.Seq2Seq), character by character, on text
that Python's standard library writes: dates as `datetime.strftime` and `calendar` spell them in
several human formats ("Tuesday, 14 March 1995", "14 Mar 1995", "March 14, 1995", "1995 Mar 14",
...), to be rewritten in ISO form ("1995-03-14"). No download, nothing written by hand.

Two models of the same size and training budget, trained by rnncore.trainer.Trainer:

    attention   encoder-decoder with additive (Bahdanau) attention (--attention to pick another)
    baseline    the same encoder-decoder without attention (the source reaches the decoder only
                through the encoder's final state)

scored on held-out dates by exact match (the whole ISO date right) and per-character accuracy,
greedy and beam search; an attention heat map of a few test dates is saved as a PNG.

    --task reverse  instead: spell identifiers taken from the standard library's source backwards.

Run:  python examples/seq2seq_attention.py [--task dates|reverse] [--attention bahdanau|luong_general|
      luong_dot] [--out DIR].  matplotlib is needed for the plot only.
"""
import os

# small per-step products: idle OpenMP threads should sleep, not spin, on a shared machine
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse
import calendar
import datetime
import keyword
import re
import sysconfig
import time

import numpy as np

from rnncore.optim import Adam
from rnncore.seq2seq import Seq2Seq, make_batches
from rnncore.trainer import Trainer

from _common import add_common_arguments, run_with_threads, save_figure  # examples/_common.py

PAD, BOS, EOS = "\0", "^", "$"
FORMATS = ["%A, %d %B %Y", "%d %b %Y", "%B %d, %Y", "%Y %b %d", "%a %d %B %Y", "%d.%m.%Y", "%b %d %Y",
           "%A %B %d %Y"]


def date_pairs(rng, n):
    """n (human date, ISO date) pairs for days drawn uniformly from 1900-01-01 .. 2099-12-31."""
    lo, hi = datetime.date(1900, 1, 1).toordinal(), datetime.date(2099, 12, 31).toordinal()
    pairs = []
    for day, fmt in zip(rng.integers(lo, hi + 1, n), rng.integers(0, len(FORMATS), n)):
        d = datetime.date.fromordinal(int(day))
        # calendar's English names, independent of the process locale
        text = FORMATS[fmt].replace("%A", calendar.day_name[d.weekday()]).replace(
            "%a", calendar.day_abbr[d.weekday()]).replace("%B", calendar.month_name[d.month]).replace(
            "%b", calendar.month_abbr[d.month])
        pairs.append((d.strftime(text), d.isoformat()))
    return pairs


def identifier_pairs(rng, n_train, n_test):
    """(identifier, reversed identifier) from the standard library's source, train and test disjoint."""
    stdlib = sysconfig.get_paths()["stdlib"]
    words = set(keyword.kwlist)
    for name in sorted(os.listdir(stdlib)):
        if name.endswith(".py") and not name.startswith("_"):
            with open(os.path.join(stdlib, name), encoding="utf-8", errors="replace") as f:
                words.update(re.findall(r"\b[a-z][a-z_]{3,11}\b", f.read()))
    words = sorted(words)
    rng.shuffle(words)
    words = words[:n_train + n_test]
    pairs = [(w, w[::-1]) for w in words]
    return pairs[n_test:], pairs[:n_test]


class Vocab:
    def __init__(self, texts, specials):
        self.chars = list(specials) + sorted(set("".join(texts)) - set(specials))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text):
        return [self.index[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def __len__(self):
        return len(self.chars)


def evaluate(model, pairs, src_vocab, tgt_vocab, beam_size=1, batch_size=250):
    """(exact-match accuracy, per-character accuracy, predictions) on (source, target) text pairs."""
    preds = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        src, sl, _, _ = make_batches([(src_vocab.encode(s), [0]) for s, _ in chunk], len(chunk),
                                     bos=tgt_vocab.index[BOS], eos=tgt_vocab.index[EOS])[0]
        max_len = max(len(t) for _, t in chunk) + 2
        if beam_size == 1:
            out = model.greedy(src, sl, max_len)
        else:
            out = model.beam_search(src, sl, beam_size, max_len)
        for b in range(len(chunk)):
            preds.append(tgt_vocab.decode(out.ids[:out.lengths[b], b]).split(EOS)[0])
    exact = np.mean([p == t for p, (_, t) in zip(preds, pairs)])
    # per-character accuracy: position by position against the target (missing characters are wrong)
    chars = np.mean([sum(a == b for a, b in zip(p.ljust(len(t), PAD), t)) / len(t)
                     for p, (_, t) in zip(preds, pairs)])
    return exact, chars, preds


def train(model, batches, steps, lr, seed):
    trainer = Trainer(model, Adam(model.params, model.grads, lr=lr, clip_norm=5.0), seed=seed)
    t0 = time.perf_counter()
    trainer.fit(batches, max_steps=steps)
    return time.perf_counter() - t0, float(np.mean(trainer.history["loss"][-50:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=["dates", "reverse"], default="dates")
    ap.add_argument("--attention", choices=["bahdanau", "luong_general", "luong_dot"], default="bahdanau")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per model")
    ap.add_argument("--hidden", type=int, default=64)
    add_common_arguments(ap)
    run_with_threads(run, ap.parse_args())


def run(args):
    rng = np.random.default_rng(args.seed)

    if args.task == "dates":
        train_pairs, test_pairs = date_pairs(rng, 20000), date_pairs(rng, 1000)
        seen = {s for s, _ in train_pairs}
        test_pairs = [p for p in test_pairs if p[0] not in seen][:500]
    else:
        train_pairs, test_pairs = identifier_pairs(rng, 6000, 500)
    src_vocab = Vocab([s for s, _ in train_pairs + test_pairs], [PAD])
    tgt_vocab = Vocab([t for _, t in train_pairs + test_pairs], [BOS, EOS])
    batches = make_batches([(src_vocab.encode(s), tgt_vocab.encode(t)) for s, t in train_pairs], 64,
                           bos=0, eos=1, rng=args.seed)
    print(f"task {args.task}: {len(train_pairs)} training pairs, {len(test_pairs)} held-out; "
          f"e.g. {train_pairs[0][0]!r} -> {train_pairs[0][1]!r}")

    results, models = {}, {}
    for name, attention in ((f"attention ({args.attention})", args.attention), ("no attention", "none")):
        model = Seq2Seq(len(src_vocab), len(tgt_vocab), hidden_size=args.hidden, embedding_dim=32, cell="gru",
                        attention=attention, bos=0, eos=1, seed=args.seed)
        secs, loss = train(model, batches, args.steps, 3e-3, args.seed)
        greedy = evaluate(model, test_pairs, src_vocab, tgt_vocab)
        beam = evaluate(model, test_pairs, src_vocab, tgt_vocab, beam_size=3)
        results[name] = (secs, loss, greedy, beam)
        models[name] = model
        print(f"  {name}: {args.steps} steps in {secs:.0f} s, final training loss {loss:.3f} nats/char")

    print(f"\nheld-out accuracy ({len(test_pairs)} pairs)      exact match    characters")
    for name, (_, _, greedy, beam) in results.items():
        print(f"  {name:<24} greedy       {greedy[0]:9.1%}   {greedy[1]:11.1%}")
        print(f"  {'':<24} beam 3       {beam[0]:9.1%}   {beam[1]:11.1%}")
    att_name = next(iter(results))
    preds = results[att_name][2][2]
    print("\nexamples (attention model, greedy):")
    for (s, t), p in list(zip(test_pairs, preds))[:5]:
        print(f"  {s:<30} -> {p:<14} {'ok' if p == t else 'expected ' + t}")

    plot_attention(args, models[att_name], test_pairs[:4], src_vocab, tgt_vocab)


def plot_attention(args, model, pairs, src_vocab, tgt_vocab):
    """Heat maps of α_{t,s}: one row per output character, one column per input character."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot written")
        return
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4.2))
    for ax, (s, _) in zip(np.atleast_1d(axes), pairs):
        src = np.array(src_vocab.encode(s))[:, None]
        out = model.greedy(src, max_length=len(s) + 12)
        n = int(out.lengths[0])
        text = tgt_vocab.decode(out.ids[:n, 0])
        ax.imshow(out.attention[:n, 0], cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_xticks(range(len(s)), list(s), fontsize=7)
        ax.set_yticks(range(n), list(text), fontsize=8)
        ax.set_xlabel("input")
        ax.set_ylabel("output")
        ax.set_title(s, fontsize=9)
    fig.suptitle(f"{model.attention} attention weights α (rnncore Seq2Seq)")
    save_figure(fig, args, f"seq2seq_attention_{args.task}.png")


if __name__ == "__main__":
    main()
