"""The ``rnncore`` command: train a character-level language model, sample from it, benchmark.

    rnncore train [--data FILE] [options]     train (default corpus: the Python standard library's source)
    rnncore sample CHECKPOINT [options]       generate text from a trained checkpoint
    rnncore bench [options]                   run the benchmark (rnncore.benchmark)

Mistakes a person can make (a missing, empty or binary file, a bad option value, a checkpoint of
another model or a corrupted one) end with a one-line message on stderr and exit status 1 (2 for a
bad command line), never a traceback.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

from rnncore.training.checkpoint import CheckpointError
from rnncore.training.data import (CharVocab, DataError, TextStreams, read_text, split_text, stdlib_corpus,
                          unigram_entropy)

__all__ = ["main"]

# Defaults of `rnncore train`, tuned to finish in about a minute on 2 cores (see README).
DEFAULTS = dict(cell="gru", hidden_size=256, num_layers=1, embedding_dim=64, steps=1000, lr=6e-3,
                tbptt=64, batch_size=32, seed=0, out="rnncore-char.npz", clip=1.0, optimizer="adam",
                schedule="cosine", max_chars=2_000_000, val_chars=60_000, sample_length=300,
                temperature=0.8)


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is reported on one line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# option types: each rejects a bad value with a short reason


def _checked(convert, ok, what):
    """An argparse type: convert(s), refused with "expected <what>, got 's'" unless ok(value)."""
    def parse(s):
        try:
            v = convert(s)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def build_parser():
    parser = _Parser(prog="rnncore", description="rnncore: recurrent networks on the CPU. "
                     "Train a character-level language model, sample from it, or run the benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="{train,sample,bench}", parser_class=_Parser)

    t = sub.add_parser(
        "train", help="train a character-level language model",
        description="Train a character-level language model and write a checkpoint. With no --data, "
                    "trains on Python source from the standard library (no download).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", metavar="FILE", help="UTF-8 text file to train on (default: stdlib source)")
    # model options default to None so that --resume can tell which ones were given
    t.add_argument("--cell", choices=("rnn", "lstm", "gru"), help=f"recurrent cell (default {DEFAULTS['cell']})")
    t.add_argument("--hidden-size", type=_positive_int, metavar="N",
                   help=f"hidden units per layer (default {DEFAULTS['hidden_size']})")
    t.add_argument("--num-layers", type=_positive_int, metavar="N",
                   help=f"recurrent layers (default {DEFAULTS['num_layers']})")
    t.add_argument("--embedding-dim", type=_nonnegative_int, metavar="N",
                   help=f"character embedding size, 0 for one-hot input (default {DEFAULTS['embedding_dim']})")
    t.add_argument("--steps", type=_positive_int, default=DEFAULTS["steps"], metavar="N",
                   help="optimizer steps in total (one per truncated-BPTT chunk)")
    t.add_argument("--lr", type=_positive_float, default=DEFAULTS["lr"], help="peak learning rate")
    t.add_argument("--optimizer", choices=("adam", "rmsprop", "sgd"), default=DEFAULTS["optimizer"])
    t.add_argument("--schedule", choices=("cosine", "step", "constant"), default=DEFAULTS["schedule"],
                   help="learning-rate schedule (step: x0.5 every steps/4)")
    t.add_argument("--clip", type=_positive_float, default=DEFAULTS["clip"], metavar="NORM",
                   help="clip the global gradient norm to this value")
    t.add_argument("--tbptt", type=_positive_int, default=DEFAULTS["tbptt"], metavar="K",
                   help="truncated BPTT chunk length (steps of backpropagation)")
    t.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"], metavar="B",
                   help="parallel text streams per batch")
    t.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads for the kernels (default: the CPUs available)")
    t.add_argument("--seed", type=_nonnegative_int, default=DEFAULTS["seed"],
                   help="one seed for initialisation, data order and samples")
    t.add_argument("--out", default=DEFAULTS["out"], metavar="PATH", help="checkpoint to write")
    t.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue training from this checkpoint (same data; --steps is the new total)")
    t.add_argument("--eval-every", type=_positive_int, default=None, metavar="N",
                   help="evaluate and print a sample every N steps (default: steps/5)")
    t.add_argument("--patience", type=_positive_int, default=None, metavar="N",
                   help="stop early after N evaluations without improvement")
    t.add_argument("--max-chars", type=_positive_int, default=DEFAULTS["max_chars"], metavar="N",
                   help="use at most N characters of the corpus")
    t.add_argument("--val-chars", type=_positive_int, default=DEFAULTS["val_chars"], metavar="N",
                   help="hold out at most N characters (10%% of the text at most) for validation")
    t.add_argument("--sample-length", type=_nonnegative_int, default=DEFAULTS["sample_length"], metavar="N",
                   help="length of the final sample (0: none)")
    t.add_argument("--temperature", type=_positive_float, default=DEFAULTS["temperature"],
                   help="sampling temperature of the printed samples")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a checkpoint written by `rnncore train`.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("checkpoint", metavar="CHECKPOINT")
    s.add_argument("--length", type=_positive_int, default=500, metavar="N", help="characters to generate")
    s.add_argument("--temperature", type=_positive_float, default=0.8,
                   help="softmax temperature: lower is more conservative, higher more varied")
    s.add_argument("--prime", default=None, metavar="TEXT",
                   help="text to start from (default: a newline, or the first character of the vocabulary)")
    s.add_argument("--seed", type=_nonnegative_int, default=None, help="seed for sampling (default: random)")
    s.add_argument("--threads", type=_positive_int, default=None, metavar="N")
    s.set_defaults(func=cmd_sample)

    sub.add_parser("bench", help="run the benchmark (rnncore bench --help for its options)", add_help=False)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from rnncore import benchmark
        return benchmark.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("expected a command: train, sample or bench")
    try:
        return args.func(args) or 0
    except (UsageError, DataError, CheckpointError) as e:
        _fail(e)
    except OSError as e:
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else e)
    except MemoryError:
        _fail("out of memory (try a smaller --batch-size, --hidden-size or --max-chars)")
    except KeyboardInterrupt:
        print("rnncore: interrupted", file=sys.stderr)
        return 130
    return 1


def _fail(msg):
    line = " ".join(str(msg).split())  # one line, whatever the message held
    print(f"rnncore: error: {line}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# train


def cmd_train(args):
    import rnncore
    from rnncore.models.sequence import SequenceModel
    from rnncore.training.optim import OPTIMIZERS, Constant, Cosine, StepDecay
    from rnncore.training.trainer import Trainer

    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out {args.out}: directory {out_dir} does not exist")
    if os.path.isdir(args.out):
        raise UsageError(f"--out {args.out} is a directory, expected a file name")
    threads = args.threads or rnncore.get_num_threads()

    # the text
    if args.data is not None:
        text = read_text(args.data)
        source = f"{args.data}"
    else:
        text, files = stdlib_corpus(max_chars=args.max_chars)
        source = f"Python standard library source ({len(files)} files)"
    if len(text) > args.max_chars:
        print(f"note: using the first {args.max_chars:,} of {len(text):,} characters (--max-chars)", flush=True)
        text = text[: args.max_chars]
    if len(text) < 100:
        raise DataError(f"{args.data}: {len(text)} characters, expected at least 100 to train on")
    train_text, val_text = split_text(text, 0.1, max_val_chars=args.val_chars)

    resume_meta = None
    if args.resume:
        from rnncore.training import checkpoint
        _, resume_meta = checkpoint.load(args.resume)
        if "vocab" not in resume_meta or "trainer" not in resume_meta:
            raise CheckpointError(f"{args.resume}: not a checkpoint of `rnncore train`")
        vocab = CharVocab(resume_meta["vocab"])
    else:
        vocab = CharVocab.from_text(text)
    train_ids, val_ids = vocab.encode(train_text), vocab.encode(val_text)
    h_unigram = unigram_entropy(train_ids, len(vocab))
    print(f"corpus: {source}: {len(text):,} characters, vocabulary of {len(vocab)}", flush=True)
    print(f"train {len(train_ids):,} characters, validation {len(val_ids):,}", flush=True)
    print(f"unigram entropy of the training text: {h_unigram:.3f} bits/char "
          f"(what a model that ignores context gets)", flush=True)
    batch_size = args.batch_size
    if len(train_ids) // batch_size < 2 * args.tbptt:
        # a short text: fewer streams, so that each stream still spans a couple of chunks
        batch_size = max(1, len(train_ids) // (2 * args.tbptt))
        print(f"note: a short text: {batch_size} stream{'s' * (batch_size > 1)} per batch instead of "
              f"{args.batch_size}", flush=True)
    train = TextStreams(train_ids, batch_size)
    val = None
    if len(val_ids) > 1:
        val = TextStreams(val_ids, max(1, min(batch_size, (len(val_ids) - 1) // 2)), random_offset=False)

    eval_every = args.eval_every or max(1, args.steps // 5)
    metadata = {"vocab": vocab.chars, "data": source,
                "unigram_bits_per_char": h_unigram}
    trainer_kw = dict(tbptt=args.tbptt, eval_every=eval_every, patience=args.patience,
                      checkpoint_path=args.out, checkpoint_every=eval_every, metadata=metadata,
                      progress=False if args.no_progress else None, loss_in_bits=True)

    if resume_meta is not None:
        saved = resume_meta["model"]
        for opt, key in (("cell", "cell"), ("hidden_size", "hidden_size"), ("num_layers", "num_layers")):
            given = getattr(args, opt)
            if given is not None and given != saved.get(key):
                raise CheckpointError(f"{args.resume}: checkpoint is from another model "
                                      f"(--{opt.replace('_', '-')} {given}, the checkpoint has {saved.get(key)})")
        trainer = Trainer.from_checkpoint(args.resume, **trainer_kw)
        model = trainer.model
    else:
        cell = args.cell or DEFAULTS["cell"]
        emb = DEFAULTS["embedding_dim"] if args.embedding_dim is None else args.embedding_dim
        model = SequenceModel(cell, hidden_size=args.hidden_size or DEFAULTS["hidden_size"],
                              num_layers=args.num_layers or DEFAULTS["num_layers"], vocab_size=len(vocab),
                              embedding_dim=emb or None, seed=args.seed)
        if args.schedule == "cosine":
            schedule = Cosine(args.lr, args.steps, min_lr=args.lr / 20, warmup_steps=min(20, args.steps // 10))
        elif args.schedule == "step":
            schedule = StepDecay(args.lr, max(1, args.steps // 4), gamma=0.5)
        else:
            schedule = Constant(args.lr)
        opt_kw = {"momentum": 0.9} if args.optimizer == "sgd" else {}
        optimizer = OPTIMIZERS[args.optimizer](model.params, model.grads, lr=schedule, clip_norm=args.clip, **opt_kw)
        trainer = Trainer(model, optimizer, seed=args.seed, **trainer_kw)

    say = trainer.write
    rnn = model.rnn
    opt = trainer.optimizer
    print(f"model: {model.cell.upper()}, {rnn.num_layers} layer{'s' * (rnn.num_layers > 1)} of "
          f"{rnn.hidden_size}, {'embedding ' + str(model.embedding_dim) if model.embedding_dim else 'one-hot input'}, "
          f"{model.num_params:,} parameters; {opt.name} lr {opt.schedule.lr:g} ({opt.schedule.name}), "
          f"clip {opt.clip_norm}; tbptt {trainer.tbptt}, batch {train.batch_size}, {threads} thread"
          f"{'s' * (threads > 1)}", flush=True)
    if trainer.step:
        print(f"resuming from {args.resume} at step {trainer.step}", flush=True)
    if trainer.step >= args.steps:
        raise UsageError(f"the checkpoint is already at step {trainer.step}; ask for more with --steps")

    sample_rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    step0 = trainer.step

    def on_eval(tr, val_loss):
        recent = tr.history["loss"][-eval_every:]
        train_bits = np.mean(recent) / math.log(2) if recent else float("nan")
        elapsed = time.perf_counter() - start
        rate = (tr.step - step0) * train.batch_size * (tr.tbptt or 1) / max(elapsed, 1e-9)
        say(f"step {tr.step:>5}/{args.steps}  train {train_bits:.3f}  val {val_loss / math.log(2):.3f} "
            f"bits/char  ({elapsed:.1f} s, {rate:,.0f} chars/s)")
        say("  sample: " + repr(_sample(model, vocab, 100, args.temperature, sample_rng))[1:-1][:160])

    trainer.on_eval = on_eval
    from threadpoolctl import threadpool_limits
    # numpy's BLAS (the linear head, sampling) on one thread: faster for its small products
    with rnncore.threads(threads), threadpool_limits(limits=1, user_api="blas"):
        trainer.fit(train, val, max_steps=args.steps)  # also writes the checkpoint
        hist = trainer.history
        if val is None:
            final = float("nan")
        elif hist["val_step"] and hist["val_step"][-1] == trainer.step:
            final = hist["val_loss"][-1] / math.log(2)
        else:
            final = trainer.evaluate(val) / math.log(2)
        sample = _sample(model, vocab, args.sample_length, args.temperature, sample_rng) \
            if args.sample_length else ""
    elapsed = time.perf_counter() - start
    print(f"done: {trainer.step - step0} steps in {elapsed:.1f} s", flush=True)
    change = 100 * (final / h_unigram - 1)
    print(f"validation: {final:.3f} bits/char (unigram entropy {h_unigram:.3f}: "
          f"{abs(change):.0f}% {'lower' if change < 0 else 'higher'})", flush=True)
    if sample:
        print(f"sample (temperature {args.temperature:g}):", flush=True)
        print("-" * 72)
        print(sample)
        print("-" * 72)
    print(f"checkpoint: {args.out}  (rnncore sample {args.out})", flush=True)
    return 0


def _sample(model, vocab, length, temperature, rng, prime=None):
    from rnncore.models.sequence import generate
    if prime is None:
        prime = "\n" if "\n" in vocab.index else vocab.chars[0]
    ids = generate(model, vocab.encode(prime), length, temperature, rng)
    return vocab.decode(ids)


# ---------------------------------------------------------------------------------------------
# sample


def cmd_sample(args):
    import rnncore
    from rnncore.training.trainer import load_model

    model, meta = load_model(args.checkpoint)
    chars = meta.get("vocab")
    if not isinstance(chars, list) or model.vocab_size is None or model.head_kind != "many_to_many":
        raise CheckpointError(f"{args.checkpoint}: not a character language model checkpoint "
                              f"(written by something other than `rnncore train`)")
    try:
        vocab = CharVocab(chars)
    except ValueError:
        raise CheckpointError(f"{args.checkpoint}: corrupted vocabulary") from None
    if len(vocab) != model.vocab_size:
        raise CheckpointError(f"{args.checkpoint}: vocabulary of {len(vocab)} characters for a model "
                              f"of {model.vocab_size}")
    prime = args.prime
    if prime == "":
        raise UsageError("--prime: expected at least one character")
    if prime is not None:
        vocab.encode(prime)  # DataError naming the first unknown character
    rng = np.random.default_rng(args.seed)
    with rnncore.threads(args.threads or rnncore.get_num_threads()):
        text = _sample(model, vocab, args.length, args.temperature, rng, prime)
    sys.stdout.write((prime or "") + text + ("" if text.endswith("\n") else "\n"))
    sys.stdout.flush()
    return 0
