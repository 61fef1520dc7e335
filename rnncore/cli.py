"""The ``rnncore`` command: train a character-level language model, sample from it, benchmark.

    rnncore train [--data FILE] [options]     train (default corpus: the Python standard library's source)
    rnncore sample CHECKPOINT [options]       generate text from a trained checkpoint
    rnncore bench [options]                   run the benchmark (rnncore.benchmark)

Mistakes a person can make (a missing, empty or binary file, a bad option value, a checkpoint of
another model or a corrupted one, a run that diverges) end with a one-line message on stderr and exit
status 1 (2 for a bad command line), never a traceback.

Ctrl-C during `rnncore train` stops after the step in progress, saves the checkpoint (when the
parameters are finite) and prints the command that resumes (exit status 130); a second Ctrl-C aborts
at once. A checkpoint remembers its corpus (the file's path and a SHA-256 of its text) and the run's
settings, so `rnncore train --resume CHECKPOINT` needs nothing else, continues writing to CHECKPOINT,
and refuses another text.

Under MPI (`mpiexec -n N rnncore train ...`, the extra rnncore[mpi]) the run is data-parallel
(rnncore.distributed): every rank trains on its own streams of each batch (its block of the text),
the batch size is the global one, --threads are per rank (default: this machine's CPUs shared by its
ranks), rank 0 alone prints and writes the checkpoints, which resume on any number of ranks.
"""
import argparse
import contextlib
import hashlib
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
import time

import numpy as np

from rnncore import distributed as dist
from rnncore.training.checkpoint import CheckpointError
from rnncore.training.trainer import NonFiniteError
from rnncore.training.data import (CharVocab, DataError, TextStreams, read_text, split_text, stdlib_corpus,
                          unigram_entropy)

__all__ = ["main"]

# Defaults of `rnncore train`, tuned to finish in about a minute on 2 cores (see README).
DEFAULTS = dict(cell="gru", hidden_size=256, num_layers=1, embedding_dim=64, steps=1000, lr=6e-3,
                tbptt=64, batch_size=32, seed=0, out=os.path.join("runs", "rnncore-char.npz"), clip=1.0, optimizer="adam",
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
                    "trains on Python source from the standard library (no download). Ctrl-C stops after "
                    "the current step, saves, and prints the command that resumes.")
    D = DEFAULTS
    # options that a checkpoint remembers default to None, so that --resume can tell which were given
    t.add_argument("--data", metavar="FILE",
                   help="UTF-8 text file to train on (default: the standard library's Python source; "
                        "with --resume: the checkpoint's corpus)")
    t.add_argument("--cell", choices=("rnn", "lstm", "gru", "gf-tanh", "gf-gru", "gf-lstm"),
                   help=f"recurrent cell; gf-*: a gated-feedback stack of that cell, every layer reading "
                        f"every layer's state at t-1 (rnncore.FeedbackRNN) (default: {D['cell']})")
    t.add_argument("--hidden-size", type=_positive_int, metavar="N",
                   help=f"hidden units per layer (default: {D['hidden_size']})")
    t.add_argument("--num-layers", type=_positive_int, metavar="N",
                   help=f"recurrent layers (default: {D['num_layers']})")
    t.add_argument("--embedding-dim", type=_nonnegative_int, metavar="N",
                   help=f"character embedding size, 0 for one-hot input (default: {D['embedding_dim']})")
    t.add_argument("--steps", type=_positive_int, metavar="N",
                   help=f"optimizer steps in total, one per truncated-BPTT chunk (default: {D['steps']}; "
                        f"with --resume: the checkpoint's, and a larger number continues further)")
    t.add_argument("--lr", type=_positive_float, default=D["lr"],
                   help=f"peak learning rate (default: {D['lr']:g})")
    t.add_argument("--optimizer", choices=("adam", "rmsprop", "sgd"), default=D["optimizer"],
                   help=f"optimizer (default: {D['optimizer']})")
    t.add_argument("--schedule", choices=("cosine", "step", "constant"), default=D["schedule"],
                   help=f"learning-rate schedule; step: x0.5 every steps/4 (default: {D['schedule']})")
    t.add_argument("--clip", type=_positive_float, default=D["clip"], metavar="NORM",
                   help=f"clip the global gradient norm to this value (default: {D['clip']:g})")
    t.add_argument("--tbptt", type=_positive_int, default=D["tbptt"], metavar="K",
                   help=f"truncated BPTT chunk length (default: {D['tbptt']})")
    t.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help=f"parallel text streams per batch (default: {D['batch_size']})")
    t.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads for the kernels (default: the CPUs available)")
    t.add_argument("--seed", type=_nonnegative_int, default=D["seed"],
                   help=f"one seed for initialisation, data order and samples (default: {D['seed']})")
    t.add_argument("--out", metavar="PATH",
                   help=f"checkpoint to write, its folder created if needed; the best one by validation "
                        f"goes beside it as NAME.best.npz (default: {D['out']}; with --resume: the "
                        f"checkpoint resumed)")
    t.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue training from this checkpoint, on the corpus it remembers (default: a new run)")
    t.add_argument("--eval-every", type=_positive_int, metavar="N",
                   help="evaluate, save and print a sample every N steps (default: steps/5)")
    t.add_argument("--patience", type=_positive_int, metavar="N",
                   help="stop early after N evaluations without improvement (default: never)")
    t.add_argument("--max-chars", type=_positive_int, metavar="N",
                   help=f"use at most N characters of the corpus (default: {D['max_chars']:,})")
    t.add_argument("--val-chars", type=_positive_int, metavar="N",
                   help=f"hold out at most N characters, 10%% of the text at most, for validation "
                        f"(default: {D['val_chars']:,})")
    t.add_argument("--sample-length", type=_nonnegative_int, default=D["sample_length"], metavar="N",
                   help=f"length of the final sample, 0 for none (default: {D['sample_length']})")
    t.add_argument("--temperature", type=_positive_float, default=D["temperature"],
                   help=f"sampling temperature of the printed samples (default: {D['temperature']:g})")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (default: one on a terminal)")
    t.add_argument("--check-replicas", action="store_true",
                   help="under mpiexec: compare a digest of every rank's parameters and optimizer state at "
                        "the end of each epoch, and stop if they differ (default: off)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a checkpoint written by `rnncore train`.")
    s.add_argument("checkpoint", metavar="CHECKPOINT")
    s.add_argument("--length", type=_positive_int, default=500, metavar="N",
                   help="characters to generate (default: 500)")
    s.add_argument("--temperature", type=_positive_float, default=0.8,
                   help="softmax temperature: lower is more conservative, higher more varied (default: 0.8)")
    s.add_argument("--prime", default=None, metavar="TEXT",
                   help="text to start from (default: a newline, or the first character of the vocabulary)")
    s.add_argument("--seed", type=_nonnegative_int, default=None, help="seed for sampling (default: random)")
    s.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="threads for the kernels (default: the CPUs available)")
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
    args.argv = argv
    try:
        # overflow shows as NaN/inf, which the trainer's non-finite guard and generate report in words
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return args.func(args) or 0
    except (UsageError, DataError, CheckpointError) as e:
        _fail(e)
    except FloatingPointError as e:  # NonFiniteError among them
        _fail(f"the run diverged: {e} (try a lower --lr)" if isinstance(e, NonFiniteError) else e)
    except OSError as e:
        _fail(f"{e.strerror or e}: {e.filename}" if e.filename else e)
    except MemoryError:
        _fail("out of memory (try a smaller --batch-size, --hidden-size or --max-chars)")
    except KeyboardInterrupt:
        print("rnncore: interrupted (checkpoints already written are left as they were)", file=sys.stderr)
        return 130
    return 1


def _fail(msg):
    line = " ".join(str(msg).split())  # one line, whatever the message held
    size = dist.launched_size()
    rank = f" (rank {os.environ.get('PMI_RANK', os.environ.get('OMPI_COMM_WORLD_RANK', '?'))} of {size})" \
        if size > 1 else ""
    print(f"rnncore: error{rank}: {line}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# train


def cmd_train(args):
    """`rnncore train`; under mpiexec, on every rank, with the output of rank 0 only."""
    comm = None
    if dist.launched_size() > 1:
        try:
            comm = dist.get_comm(distributed=True)
        except ImportError as e:
            raise UsageError(f"started by mpiexec on {dist.launched_size()} ranks, but {e}") from None
    if comm is None or comm.Get_rank() == 0:
        return _train(args, comm)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        return _train(args, comm)


def _train(args, comm):
    import rnncore
    from rnncore.models.sequence import SequenceModel
    from rnncore.training.optim import OPTIMIZERS, Constant, Cosine, StepDecay
    from rnncore.training.trainer import Trainer

    resume_meta = None
    if args.resume:
        from rnncore.training import checkpoint
        _, resume_meta = checkpoint.load(args.resume)
        if "vocab" not in resume_meta or "trainer" not in resume_meta:
            raise CheckpointError(f"{args.resume}: not a checkpoint of `rnncore train`")
    # what the checkpoint remembers of its run, unless given again
    remembered = resume_meta.get("run", {}) if resume_meta and isinstance(resume_meta.get("run"), dict) else {}
    for name in ("steps", "batch_size", "max_chars", "val_chars"):
        if getattr(args, name) is None:
            setattr(args, name, remembered.get(name, DEFAULTS[name]))
    out = args.out or args.resume or DEFAULTS["out"]
    best_out = _best_path(out)
    _check_writable(out)
    threads = args.threads or (rnncore.get_num_threads() if comm is None
                               else dist.default_threads(comm, rnncore.get_num_threads()))

    text, source, corpus = _corpus(args, resume_meta)
    if len(text) < 100:
        raise DataError(f"{corpus['path'] or source}: {len(text)} characters, expected at least 100 to train on")
    train_text, val_text = split_text(text, 0.1, max_val_chars=args.val_chars)
    vocab = CharVocab(resume_meta["vocab"]) if resume_meta is not None else CharVocab.from_text(text)
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
    metadata = {"vocab": vocab.chars, "data": source, "corpus": corpus,
                "run": {name: getattr(args, name) for name in ("steps", "batch_size", "max_chars", "val_chars")},
                "unigram_bits_per_char": h_unigram}
    trainer_kw = dict(tbptt=args.tbptt, eval_every=eval_every, patience=args.patience,
                      checkpoint_path=out, checkpoint_every=eval_every, metadata=metadata,
                      best_checkpoint_path=best_out if val is not None else None,
                      progress=False if args.no_progress else None, loss_in_bits=True,
                      comm=comm, check_replicas=args.check_replicas)

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
          f"clip {opt.clip_norm}; tbptt {trainer.tbptt}, batch {train.batch_size}, "
          f"{f'{trainer.world_size} ranks x ' if comm is not None else ''}{threads} thread"
          f"{'s' * (threads > 1)}{' per rank' if comm is not None else ''}", flush=True)
    if trainer.step:
        print(f"resuming from {args.resume} at step {trainer.step}", flush=True)
    if trainer.step >= args.steps:
        raise UsageError(f"the checkpoint is already at step {trainer.step}; ask for more with --steps")
    print(f"checkpoints: {out} (the last state)" + (f", {best_out} (the best by validation)" if val else "")
          + "; Ctrl-C saves and stops", flush=True)

    sample_rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    step0 = trainer.step

    def on_eval(tr, val_loss):
        recent = tr.history["loss"][-eval_every:]
        train_bits = np.mean(recent) / math.log(2) if recent else float("nan")
        elapsed = time.perf_counter() - start
        rate = (tr.step - step0) * train.batch_size * (tr.tbptt or 1) / max(elapsed, 1e-9)
        best = "  (best so far)" if tr.best_step == tr.step else ""
        say(f"step {tr.step:>5}/{args.steps}  train {_num(train_bits)}  val {_num(val_loss / math.log(2))} "
            f"bits/char{best}  ({elapsed:.1f} s, {rate:,.0f} chars/s)")
        try:
            say("  sample: " + repr(_sample(model, vocab, 100, args.temperature, sample_rng))[1:-1][:160])
        except FloatingPointError:  # the next step's loss is not finite either: the guard stops the run
            say("  sample: none, the model's outputs are not finite")

    trainer.on_eval = on_eval
    from threadpoolctl import threadpool_limits
    # numpy's BLAS (the linear head, sampling) on one thread: faster for its small products
    with rnncore.threads(threads), threadpool_limits(limits=1, user_api="blas"):
        try:
            with _StopOnCtrlC(trainer):
                trainer.fit(train, val, max_steps=args.steps)  # also writes the checkpoints
        except OSError as e:  # a failed save names the hidden temporary file: name the user's
            raise UsageError(f"cannot write the checkpoint {out}: {e.strerror or e}") from None
        if trainer.interrupted:
            return _interrupted(trainer, out, args)
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
    if h_unigram > 0:
        change = 100 * (final / h_unigram - 1)
        print(f"validation: {_num(final)} bits/char (unigram entropy {h_unigram:.3f}: "
              f"{_num(abs(change), 0)}% {'lower' if change < 0 else 'higher'})", flush=True)
    else:
        print(f"validation: {_num(final)} bits/char (the text is one repeated character: "
              f"nothing to learn)", flush=True)
    if sample:
        print(f"sample (temperature {args.temperature:g}):", flush=True)
        print("-" * 72)
        print(sample)
        print("-" * 72)
    print(f"checkpoint: {out}, the last state, step {trainer.step}  (rnncore sample {shlex.quote(out)})", flush=True)
    if trainer.best_step is not None and os.path.exists(best_out):
        best_bits = trainer.best_val / math.log(2)
        print(f"best: {best_out}, step {trainer.best_step}, validation {_num(best_bits)} bits/char  "
              f"(rnncore sample {shlex.quote(best_out)})", flush=True)
    return 0


def _num(x, digits=3):
    """A loss as people read it: fixed digits, or 3 significant ones for a diverged run's huge values."""
    return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.3g}"


def _best_path(out):
    """Where the best checkpoint by validation goes: NAME.best.npz beside NAME.npz."""
    stem, ext = os.path.splitext(out)
    return f"{stem}.best{ext or '.npz'}"


def _check_writable(out):
    """Before training: the checkpoint's folder exists (created if not) and takes a new file."""
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a directory, expected a file name")
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write in {folder} ({e.strerror or e})") from None


def _corpus(args, resume_meta):
    """(text, description, what the checkpoint remembers: path, characters, sha256 of the text)."""
    stored = resume_meta.get("corpus") if resume_meta is not None else None
    stored = stored if isinstance(stored, dict) else None
    path = args.data
    if path is None and stored is not None and stored.get("path"):
        path = stored["path"]
        if not os.path.exists(path):
            raise DataError(f"{args.resume} was trained on {path}, which is gone; pass --data FILE with that text")
    if path is not None:
        text = read_text(path)
        source = path
    else:
        text, files = stdlib_corpus(max_chars=args.max_chars)
        source = f"Python standard library source ({len(files)} files)"
    if len(text) > args.max_chars:
        print(f"note: using the first {args.max_chars:,} of {len(text):,} characters (--max-chars)", flush=True)
        text = text[: args.max_chars]
    corpus = {"path": None if path is None else os.path.abspath(path), "chars": len(text),
              "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    if stored is not None and stored.get("sha256") != corpus["sha256"]:
        was = stored.get("path") or "the standard library's source"
        raise UsageError(f"{args.resume} was trained on another text ({was}, {stored.get('chars', '?'):,} "
                         f"characters); {source} differs ({len(text):,} characters). Resume on the same "
                         f"text, or start a new run without --resume")
    return text, source, corpus


class _StopOnCtrlC:
    """During fit: the first Ctrl-C asks the trainer to stop after its current step (it then saves);
    the second raises KeyboardInterrupt at once."""

    def __init__(self, trainer):
        self.trainer, self.pressed, self.previous = trainer, 0, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt
        self.trainer.request_stop()
        # os.write: print() may not be re-entered from a signal handler
        os.write(sys.stderr.fileno(), b"\nCtrl-C: stopping after this step to save the checkpoint "
                                      b"(press Ctrl-C again to abort at once without saving)\n")

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _interrupted(trainer, out, args):
    """After a Ctrl-C that stopped training: what was saved and the command that resumes."""
    if trainer.saved.get(out) == trainer.step:
        print(f"interrupted at step {trainer.step}/{args.steps}: saved {out}", flush=True)
        print(f"resume with: {_resume_command(args.argv, out)}", flush=True)
    elif trainer.step == 0:
        print("interrupted before the first step: nothing to save", flush=True)
    else:
        print(f"interrupted at step {trainer.step}: the parameters are not finite, nothing saved", flush=True)
    return 130


def _resume_command(argv, out):
    """The command line that resumes: the same options, --resume OUT for --data, --out and --resume."""
    dropped = ("--resume", "--out", "--data")
    kept, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a.split("=", 1)[0] in dropped:
            skip = "=" not in a
        else:
            kept.append(a)
    return shlex.join(["rnncore", "train", "--resume", out, *kept])


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
