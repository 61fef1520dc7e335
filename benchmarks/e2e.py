"""End-to-end training benchmark: a character model's training step, rnncore against the PyTorch loop.

    python benchmarks/e2e.py [--cells RNN,GRU,LSTM] [--layers 1,2] [--threads 2] [--rounds 5]
                             [--steps 15] [--warmup 3] [--check-steps 5] [--no-profile]
                             [--profile-rounds 3] [--json PATH] [--baseline DIR]

The model (issue 22): embedding 64 -> recurrent layers of 256 (one, or two stacked) -> linear to a
vocabulary of 99, softmax cross-entropy (mean over the tokens), Adam (lr 2e-3) after clipping the
global gradient norm to 1.0, truncated BPTT of 64 steps with the state carried from chunk to chunk,
batch 32, float32. rnncore runs SequenceModel + Trainer (the Trainer's own step:
``Trainer._train_chunk``, inside its BLAS limit, as ``fit`` runs it); PyTorch the idiomatic loop
(nn.Embedding, nn.RNN/GRU/LSTM, nn.Linear, F.cross_entropy, torch.optim.Adam with its defaults,
clip_grad_norm_, the state detached between chunks). Both start from the same weights (rnncore's
initialisation copied into the torch modules) and read the same batches: one text of about 2,000
chunks' worth of characters from Python's standard library, its 98 most frequent characters and one
id for all others, cut into 32 parallel streams.

1. The check, before anything is timed: both run the first --check-steps steps in this process; the
   largest relative difference of their losses must stay under CHECK_RTOL (else exit status 1).
2. The timing: one framework per process, as issue 22 measured (two OpenMP runtimes in one process
   would spin for the same two cores: ../shared/PERFORMANCE.md). Each round starts a fresh process
   for rnncore and one for PyTorch (the order alternates between rounds); each runs every model,
   --warmup steps then --steps timed steps. Reported: the median ms/step over all rounds, the ratio
   PyTorch time / rnncore time (above 1: rnncore faster), and the cores other processes used meanwhile.
3. Where rnncore's step goes: --profile-rounds more rnncore processes time each part of the step
   (exclusive time, a part nested in another counts for the inner one only), averaged over --steps
   steps in a process; each part's median over the processes is reported: the
   recurrent forward and backward scans (rnncore._kernels.forward / backward), the weight- and
   input-gradient GEMMs after the backward scan (and the bias sums), packing the weights, the head
   (forward and backward), the loss, the embedding (forward and backward), the optimizer step
   (clipping included), zeroing the gradients and the trainer's finite check, and the rest (Python).

--baseline DIR: also time and profile another rnncore, the source tree DIR with its compiled core built
in place (``git worktree add DIR <commit> && cd DIR && python setup.py build_ext --inplace``), in the
same rounds (its own process, put first on PYTHONPATH): an A/B of two versions, both against PyTorch.

Not a test: nothing fails for being slow. Figures on a machine shared with other processes are noisy
(see the "others" column): compare ratios from one run.
"""
import argparse
import collections
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

# this folder holds profile.py, which would shadow the standard library's (torch.optim imports cProfile)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402

import rnncore  # noqa: E402
from rnncore.engine import cells as _cells  # noqa: E402
from rnncore.models.sequence import SequenceModel  # noqa: E402
from rnncore.training.data import Batch, stdlib_corpus  # noqa: E402
from rnncore.training.optim import Adam  # noqa: E402
from rnncore.training.trainer import Trainer  # noqa: E402

VOCAB, EMBED, HIDDEN, BATCH, TBPTT = 99, 64, 256, 32, 64
LR, CLIP = 2e-3, 1.0
PROCESS_WARMUP = 5     # steps of a throwaway model at the start of each timing process
CHECK_RTOL = 1e-5      # losses of the first steps, relative: float32, different summation orders
CELLS = {"RNN": "rnn", "GRU": "gru", "LSTM": "lstm"}

# the parts of rnncore's step: the compiled calls of rnncore/engine/cells.py, by name
KERNEL_PARTS = {"forward": "rec fwd", "backward": "rec bwd", "matmul": "wgrad GEMMs",
                "colsum_add": "wgrad GEMMs", "lstm_peephole_grads": "wgrad GEMMs",
                "step_sums_add": "wgrad GEMMs", "step_colsum_add": "wgrad GEMMs",
                "step_dot_add": "wgrad GEMMs", "packed_rows_add": "wgrad GEMMs", "Cell": "packing"}
PARTS = ("rec fwd", "rec bwd", "wgrad GEMMs", "packing", "head", "loss", "embedding", "optimizer",
         "zero/finite", "Python")
RECURRENT = ("rec fwd", "rec bwd", "wgrad GEMMs", "packing")


def _load_beside(name):
    """benchmarks/<name>.py, imported by path (this folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "rnncore_benchmarks_" + name, os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------
# data and models


def corpus_ids(n_chars):
    """n_chars character ids in [0, VOCAB): Python's standard library, its VOCAB - 1 most frequent
    characters by rank, every other character VOCAB - 1. The same on every run of the same Python."""
    text, _ = stdlib_corpus(max_chars=n_chars)
    chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    values, counts = np.unique(chars, return_counts=True)
    ranked = values[np.argsort(-counts, kind="stable")]
    lut = dict(zip(ranked[:VOCAB - 1].tolist(), range(VOCAB - 1)))
    ids = np.array([lut.get(c, VOCAB - 1) for c in chars.tolist()], dtype=np.int64)
    if len(ids) < n_chars:
        ids = np.resize(ids, n_chars)
    return ids


def make_batch(n_chunks):
    """One Batch of BATCH parallel streams, n_chunks * TBPTT steps: X (T, B) ids, Y the next ids."""
    T = n_chunks * TBPTT
    ids = corpus_ids(BATCH * (T + 1)).reshape(BATCH, T + 1).T
    return Batch(np.ascontiguousarray(ids[:-1]), np.ascontiguousarray(ids[1:]), None)


def rnncore_model(cell, layers, seed=0):
    return SequenceModel(CELLS[cell], hidden_size=HIDDEN, num_layers=layers, vocab_size=VOCAB,
                         embedding_dim=EMBED, dtype=np.float32, seed=seed)


class RnncoreRun:
    """SequenceModel + Adam + Trainer; ``step()`` runs the Trainer's own training step on the next chunk."""

    def __init__(self, cell, layers, batch):
        self.model = rnncore_model(cell, layers)
        self.optimizer = Adam(self.model.params, self.model.grads, lr=LR, clip_norm=CLIP)
        self.trainer = Trainer(self.model, self.optimizer, tbptt=TBPTT, progress=False)
        self.chunks = iter(self.trainer._chunks(batch, TBPTT))

    def step(self):
        chunk = next(self.chunks)
        loss, _ = self.trainer._train_chunk(chunk)   # zero_grad, forward, loss, backward, finite check, step
        self.trainer.chunk_start = chunk.end          # as fit does: the next chunk carries the state
        return loss

    def blas_limit(self):
        return self.trainer._blas_limit()


class TorchRun:
    """The same model in PyTorch, with the idiomatic loop, from the rnncore model's initial weights."""

    def __init__(self, cell, layers, batch):
        import torch
        from torch import nn
        self.torch = torch
        init = rnncore_model(cell, layers).params
        self.emb = nn.Embedding(VOCAB, EMBED)
        self.rnn = getattr(nn, cell)(EMBED, HIDDEN, num_layers=layers)
        self.head = nn.Linear(HIDDEN, VOCAB)
        with torch.no_grad():
            for prefix, module in (("embedding", self.emb), ("rnn", self.rnn), ("head", self.head)):
                for name, p in module.named_parameters():
                    p.copy_(torch.from_numpy(init[f"{prefix}.{name}"]))
        self.params = [p for m in (self.emb, self.rnn, self.head) for p in m.parameters()]
        self.optimizer = torch.optim.Adam(self.params, lr=LR)
        self.X, self.Y = torch.from_numpy(batch.X), torch.from_numpy(batch.Y)
        self.t, self.state = 0, None

    def step(self):
        torch, F = self.torch, self.torch.nn.functional
        x, y = self.X[self.t:self.t + TBPTT], self.Y[self.t:self.t + TBPTT]
        self.t += TBPTT
        self.optimizer.zero_grad()
        out, state = self.rnn(self.emb(x), self.state)
        logits = self.head(out)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, CLIP)
        self.optimizer.step()
        self.state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        return loss.item()


def set_threads(n, torch=None):
    rnncore.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------------
# the check


def check(cell, layers, steps, batch):
    """Largest relative difference of the losses of the first `steps` steps, and the losses."""
    import torch
    ours, theirs = RnncoreRun(cell, layers, batch), TorchRun(cell, layers, batch)
    with ours.blas_limit():
        a = [ours.step() for _ in range(steps)]
    b = [theirs.step() for _ in range(steps)]
    del torch
    rel = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    return rel, a, b


# ---------------------------------------------------------------------------------------------------
# the profile of rnncore's step


class Split:
    """Exclusive time per part: wrap(fn, part) times each call of fn, minus the calls nested in it."""

    def __init__(self):
        self.acc = collections.defaultdict(float)
        self._stack = []

    def wrap(self, fn, part):
        def timed(*args, **kwargs):
            self._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                inner = self._stack.pop()
                self.acc[part] += dt - inner
                if self._stack:
                    self._stack[-1] += dt
        return timed

    def wrap_forward(self, piece, part):
        """piece.forward returns (Y, backprop): time both, each under `part`."""
        forward = piece.forward

        def timed_forward(*args, **kwargs):
            Y, backprop = forward(*args, **kwargs)
            return Y, self.wrap(backprop, part)
        piece.forward = self.wrap(timed_forward, part)


class _TimedKernels:
    """Stands in for rnncore._kernels inside rnncore.engine.cells, timing the calls of KERNEL_PARTS."""

    def __init__(self, kernels, split):
        self._k, self._split = kernels, split

    def __getattr__(self, name):
        f = getattr(self._k, name)
        return self._split.wrap(f, KERNEL_PARTS[name]) if name in KERNEL_PARTS else f


def profile(run, steps, warmup):
    """Mean ms per step of each part of rnncore's step (PARTS), and of the whole step."""
    split = Split()
    m, tr = run.model, run.trainer
    split.wrap_forward(m.head, "head")
    split.wrap_forward(m.embedding, "embedding")
    tr.loss_fn = split.wrap(tr.loss_fn, "loss")
    run.optimizer.step = split.wrap(run.optimizer.step, "optimizer")
    m.zero_grad = split.wrap(m.zero_grad, "zero/finite")
    tr._finite_step = split.wrap(tr._finite_step, "zero/finite")
    real, _cells.K = _cells.K, _TimedKernels(_cells.K, split)
    try:
        with run.blas_limit():
            for _ in range(warmup):
                run.step()
            split.acc.clear()
            t0 = time.perf_counter()
            for _ in range(steps):
                run.step()
            total = time.perf_counter() - t0
    finally:
        _cells.K = real
    parts = {p: split.acc[p] / steps * 1e3 for p in PARTS if p != "Python"}
    parts["Python"] = total / steps * 1e3 - sum(parts.values())
    parts["total"] = total / steps * 1e3
    return parts


# ---------------------------------------------------------------------------------------------------
# the timed worker (one framework per process)


def worker(opts):
    bench = _load_beside("bench")
    torch = None
    if opts.worker == "torch":
        import torch
    set_threads(opts.threads, torch)
    batch = make_batch(opts.warmup + opts.steps)
    # A process's first steps are slower (thread teams start, the allocator settles: the first model
    # of a process measured 2-3x its head time): a throwaway model takes them before anything counts.
    warm = (TorchRun if torch is not None else RnncoreRun)(opts.cells[0], opts.layers[0], batch)
    with warm.blas_limit() if torch is None else _nullcontext():
        for _ in range(min(PROCESS_WARMUP, opts.warmup + opts.steps)):
            warm.step()
    del warm
    out = []
    for cell in opts.cells:
        for layers in opts.layers:
            run = (TorchRun if torch is not None else RnncoreRun)(cell, layers, batch)
            row = {"cell": cell, "layers": layers}
            load = bench.CpuLoad()
            if opts.profile:
                row["profile"] = profile(run, opts.steps, opts.warmup)
            else:
                limit = run.blas_limit() if torch is None else _nullcontext()
                times = []
                with limit:
                    for _ in range(opts.warmup):
                        run.step()
                    for _ in range(opts.steps):
                        t0 = time.perf_counter()
                        run.step()
                        times.append(time.perf_counter() - t0)
                row["ms"] = [t * 1e3 for t in times]
            row["load"] = load.stop()
            out.append(row)
    json.dump(out, sys.stdout)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run_worker(framework, opts, profile_run=False):
    """Run one worker process: framework "rnncore", "torch" or "baseline" (rnncore from --baseline)."""
    env = dict(os.environ)
    if framework == "baseline":
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(opts.baseline)] + env.get("PYTHONPATH", "").split(os.pathsep))
        framework = "rnncore"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework,
           "--cells", ",".join(opts.cells), "--layers", ",".join(map(str, opts.layers)),
           "--threads", str(opts.threads), "--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    if profile_run:
        cmd.append("--profile")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{framework} worker failed:\n{res.stderr}")
    return json.loads(res.stdout)


# ---------------------------------------------------------------------------------------------------
# main


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="RNN,GRU,LSTM")
    ap.add_argument("--layers", default="1,2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="processes per framework (alternating)")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per model and process")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--check-steps", type=int, default=5)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-rounds", type=int, default=3, help="profiling processes per version")
    ap.add_argument("--json")
    ap.add_argument("--baseline", metavar="DIR", help="also run the rnncore of this source tree (built in place)")
    ap.add_argument("--worker", choices=("rnncore", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    opts.cells = [c.strip().upper() for c in opts.cells.split(",")]
    for c in opts.cells:
        if c not in CELLS:
            ap.error(f"--cells: expected names from {sorted(CELLS)}, got {c!r}")
    opts.layers = [int(n) for n in opts.layers.split(",")]
    return opts


def _median(rows, cell, layers):
    return statistics.median(t for r in rows if (r["cell"], r["layers"]) == (cell, layers) for t in r["ms"])


def main(argv=None):
    opts = parse(argv)
    if opts.worker:
        worker(opts)
        return 0
    bench = _load_beside("bench")
    env = bench.environment()
    import torch
    set_threads(opts.threads, torch)
    pools = ", ".join(f"{p.get('internal_api')} {p.get('architecture')}" for p in env["threadpools"] or [])
    print(f"# rnncore {env['versions']['rnncore']} vs torch {env['versions']['torch']}: "
          f"{env['cpu']['model']}, {opts.threads} threads, float32, "
          f"OPENBLAS_CORETYPE={env['openblas_coretype']} (BLAS: {pools})")
    print(f"# model: embedding {EMBED} -> {{1,2}} x {HIDDEN} -> linear {VOCAB}, cross-entropy, Adam "
          f"lr {LR} + clip {CLIP}, TBPTT {TBPTT}, batch {BATCH}\n")

    # 1. the check
    batch = make_batch(opts.check_steps)
    checks, ok = {}, True
    for cell in opts.cells:
        for layers in opts.layers:
            rel, a, b = check(cell, layers, opts.check_steps, batch)
            checks[(cell, layers)] = rel
            good = rel <= CHECK_RTOL
            ok &= good
            print(f"check {cell} x{layers}: losses of {opts.check_steps} steps agree to {rel:.1e} relative "
                  f"({'ok' if good else f'FAILED, above {CHECK_RTOL:.0e}'}); rnncore {a[0]:.6f} .. {a[-1]:.6f}")
    if not ok:
        print("the check failed: nothing timed")
        return 1

    # 2. the timing, one framework per process, alternating
    frameworks = ("rnncore", "torch") + (("baseline",) if opts.baseline else ())
    rows = {fw: [] for fw in frameworks}
    loads = []
    for r in range(opts.rounds):
        order = frameworks if r % 2 == 0 else frameworks[::-1]
        for fw in order:
            got = run_worker(fw, opts)
            rows[fw] += got
            loads += [g["load"]["others"] for g in got if g.get("load")]
        print(f"round {r + 1}/{opts.rounds} done", file=sys.stderr)
    print(f"\n{opts.rounds} processes per framework (alternating), {opts.warmup} warm-up + {opts.steps} "
          f"timed steps per model in each; median ms/step over all of them; others' load "
          f"{statistics.median(loads) if loads else float('nan'):.2f} cores (median)\n")
    base = " baseline ms/step | ratio (torch / baseline) |" if opts.baseline else ""
    print(f"| cell | layers | rnncore ms/step | PyTorch ms/step | ratio (torch / rnncore) |{base} losses agree to |")
    print("|---|---:|---:|---:|---:|" + ("---:|---:|" if opts.baseline else "") + "---:|")
    table = []
    for cell in opts.cells:
        for layers in opts.layers:
            ours, theirs = _median(rows["rnncore"], cell, layers), _median(rows["torch"], cell, layers)
            row = {"cell": cell, "layers": layers, "rnncore_ms": ours, "torch_ms": theirs,
                   "ratio": theirs / ours, "check_rel": checks[(cell, layers)]}
            extra = ""
            if opts.baseline:
                row["baseline_ms"] = b = _median(rows["baseline"], cell, layers)
                extra = f" {b:.1f} | {theirs / b:.2f} |"
            table.append(row)
            print(f"| {cell} | {layers} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.2f} |{extra} "
                  f"{checks[(cell, layers)]:.0e} |")

    # 3. where rnncore's step goes
    profiles = []
    if not opts.no_profile:
        versions = ("rnncore", "baseline") if opts.baseline else ("rnncore",)
        runs = {fw: [] for fw in versions}
        for r in range(opts.profile_rounds):
            for fw in versions if r % 2 == 0 else versions[::-1]:
                runs[fw] += run_worker(fw, opts, profile_run=True)
        print(f"\nrnncore's step by part: ms/step, mean of {opts.steps} steps after {opts.warmup} in a process, "
              f"median of {opts.profile_rounds} processes per version (alternating); exclusive times; "
              f"'outside' = everything but the recurrent scans, their GEMMs and packing; 'others' = "
              f"cores other processes used meanwhile (median)\n")
        print("| version | cell | layers | step | " + " | ".join(PARTS) + " | outside | others |")
        print("|---|---|---:|---:|" + "---:|" * (len(PARTS) + 2))
        for fw in versions:
            for cell in opts.cells:
                for layers in opts.layers:
                    got = [p for p in runs[fw] if (p["cell"], p["layers"]) == (cell, layers)]
                    parts = {k: statistics.median(p["profile"][k] for p in got) for k in PARTS + ("total",)}
                    others = statistics.median((p.get("load") or {}).get("others", float("nan")) for p in got)
                    outside = sum(parts[k] for k in PARTS if k not in RECURRENT)
                    version = "this" if fw == "rnncore" else "baseline"
                    profiles.append({"version": version, "cell": cell, "layers": layers, "profile": parts,
                                     "others": others, "samples": got})
                    print(f"| {version} | {cell} | {layers} | {parts['total']:.1f} | "
                          + " | ".join(f"{parts[k]:.2f}" for k in PARTS)
                          + f" | {outside:.2f} ({100 * outside / parts['total']:.0f}%) | {others:.2f} |")
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"environment": env, "settings": {k: v for k, v in vars(opts).items()},
                       "table": table, "samples": rows, "profile": profiles}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
