"""``rnncore bench``: time rnncore's layers against PyTorch, after checking each one against it.

    rnncore bench [--cells RNN,GRU,LSTM] [--shapes S,M,L,B1] [--dtype float32[,float64]]
                  [--threads 1,2] [--quick] [--json PATH]

``--quick`` (about half a minute on 2 cores) times the shapes S and M with 3 samples each; the
default run times every shape with 11. After the table, a few sentences say what was compared,
whether every layer agreed with its oracle, and how much faster rnncore was.

For each cell, shape, dtype and thread count:

1. a ``torch.nn`` module's weights are copied into the rnncore layer (``load_state_dict``) and the
   layer is checked against the module on the first few timesteps (outputs, final states, the input
   gradient and every weight gradient); a layer that disagrees is marked FAIL and is not timed.
   Without PyTorch the oracle is the numpy reference (``rnncore.layers.reference``) and only rnncore is timed;
2. the inference pass ``layer(x)`` and the training pass ``forward_train(x)`` + ``backprop(d_out)`` are
   timed beside torch's ``module(x)`` under ``inference_mode`` and ``module(x)`` + ``backward``, in
   one interleaved series (every variant sampled in turn, the order flipping each round, each sample
   on its own thread count), and the medians are reported with the ratio torch time / rnncore time.

The exit status is 1 when a check failed, so a wrong kernel fails a script or CI job. The fuller
harness (machine probes, sweeps, plots, memory, profiles) is ``benchmarks/`` in the source tree.
FLOPs counted: forward ``2*T*B*G*H*(I+H)``, training 3x that; G = 1, 3, 4 for RNN, GRU, LSTM.
"""
import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time

import numpy as np

import rnncore

# name: (B, T, I, H); inputs are batch_first (B, T, I)
SHAPES = {"S": (32, 50, 32, 64), "M": (64, 100, 128, 256), "L": (128, 50, 512, 512), "B1": (1, 200, 64, 128)}
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
PASSES = ("fwd", "train")
CHECK_STEPS = 8             # timesteps used by the check before timing
# A check fails when max|rnncore - oracle| / max(1, max|oracle|) exceeds this, for any compared array.
TOLERANCE = {"float32": 5e-5, "float64": 1e-9}
FULL_TOLERANCE = {"float32": 2e-4, "float64": 1e-8}   # full-shape outputs after timing (longer sums)
SCHEMA = "rnncore-bench/1"
QUICK_SHAPES = ["S", "M"]   # --quick: a small and a mid-sized problem, well under a minute in all
# The torch training-loop row: a torch model, embedding -> GRU -> linear, trained with cross-entropy and
# Adam, stock (torch.nn.GRU) and converted (rnncore.torch.convert), one step per call; at shape S
# (batch, steps, embedding = inputs, hidden) with this vocabulary.
TRAINING_VOCAB = 64


def flops(cell, shape, pass_):
    """Matrix-product FLOPs of one call: forward 2*T*B*G*H*(I+H); training 3x forward."""
    B, T, I, H = shape
    fwd = 2 * T * B * GATES[cell] * H * (I + H)
    return fwd if pass_ == "fwd" else 3 * fwd


def import_torch():
    """torch, or None when it is not installed (the benchmark then times rnncore alone)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def threads(n):
    """Run rnncore, torch and the BLAS numpy calls on n threads; restore them afterwards."""
    from threadpoolctl import threadpool_limits
    torch = import_torch()
    saved_torch = torch.get_num_threads() if torch is not None else None
    saved = rnncore.get_num_threads()
    if torch is not None:
        torch.set_num_threads(n)
    rnncore.set_num_threads(n)
    limits = threadpool_limits(limits=n, user_api="blas")
    try:
        yield
    finally:
        limits.restore_original_limits()
        rnncore.set_num_threads(saved)
        if torch is not None:
            torch.set_num_threads(saved_torch)


def _time_calls(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def time_interleaved(fns, repeats, warmup, min_time, setups=None):
    """{name: {'median_ms', 'min_ms', 'samples_ms', 'calls_per_sample'}} for each callable in `fns`.

    Each function is warmed up, then called often enough per sample to last `min_time` seconds;
    samples alternate between the functions, the order flipping every round, so that drifts of the
    machine (other users, clocks) hit every function alike. `setups` (name -> context manager factory,
    e.g. a thread count) is entered around each function's warm-up and samples, outside the timing.
    """
    setups = setups or {}
    number = {}
    for name, fn in fns.items():
        with setups.get(name, contextlib.nullcontext)():
            t = min(_time_calls(fn, 1) for _ in range(max(1, warmup)))
        number[name] = max(1, int(min_time / max(t, 1e-9)))
    samples = {name: [] for name in fns}
    order = list(fns)
    gc_was_enabled = gc.isenabled()
    gc.disable()            # a collection inside one sample would be charged to one function only
    try:
        for r in range(repeats):
            for name in (order if r % 2 == 0 else order[::-1]):
                with setups.get(name, contextlib.nullcontext)():
                    samples[name].append(_time_calls(fns[name], number[name]))
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: {"median_ms": 1e3 * statistics.median(s), "min_ms": 1e3 * min(s),
                   "samples_ms": [1e3 * v for v in s], "calls_per_sample": number[name]}
            for name, s in samples.items()}


# ---------------------------------------------------------------------------------------------------
# The check before timing

def torch_module(cell, shape, dtype, seed):
    torch = import_torch()
    B, T, I, H = shape
    torch.manual_seed(seed)
    module = getattr(torch.nn, cell)(I, H, batch_first=True)
    return module.double() if dtype == "float64" else module.float()


def rnncore_layer(cell, shape, dtype, seed, module=None):
    """rnncore's layer, on `module`'s weights when given."""
    B, T, I, H = shape
    layer = getattr(rnncore, cell)(I, H, batch_first=True, dtype=np.dtype(dtype), seed=seed)
    if module is not None:
        layer.load_state_dict({k: v.detach().numpy().astype(dtype) for k, v in module.state_dict().items()})
    return layer


def _flat(h):
    """h_n or (h_n, c_n) as a list of arrays."""
    return list(h) if isinstance(h, (tuple, list)) else [h]


class Comparison:
    """The worst relative error, max|got - want| / max(1, max|want|), over named arrays, and any
    missing array or wrong dtype or shape."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.max_err, self.worst, self.problems = 0.0, None, []

    def add(self, name, got, want):
        want = np.asarray(want, dtype=np.float64)
        if got is None or np.shape(got) != want.shape:
            self.problems.append("%s: shape %s, expected %s" % (name, np.shape(got) if got is not None else None,
                                                                 want.shape))
            err = float("inf")
        else:
            if got.dtype != self.dtype:
                self.problems.append("%s: dtype %s, expected %s" % (name, got.dtype, self.dtype))
            diff = np.abs(got.astype(np.float64) - want)
            err = float(np.max(diff, initial=0.0)) / max(1.0, float(np.max(np.abs(want), initial=0.0)))
            if not np.isfinite(err):
                err = float("inf")
        if err >= self.max_err:
            self.max_err, self.worst = err, name

    def result(self, tol, oracle):
        ok = not self.problems and self.max_err <= tol
        return {"status": "ok" if ok else "FAIL", "oracle": oracle, "max_err": self.max_err,
                "worst": self.worst, "tol": tol, "problems": self.problems}


def _torch_run(module, x, d_out):
    """Output, final states, input and weight gradients of a torch module, as numpy."""
    torch = import_torch()
    xt = torch.from_numpy(x.copy()).requires_grad_()
    module.zero_grad(set_to_none=True)
    out, h = module(xt)
    out.backward(torch.from_numpy(d_out))
    grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
    return out.detach().numpy(), [t.detach().numpy() for t in _flat(h)], xt.grad.numpy(), grads


def _reference_run(layer, x, d_out):
    """The same from the numpy reference, on the layer's weights."""
    from rnncore.layers import reference
    params = layer.state_dict()
    out, h, cache = reference.forward(layer.config, params, x, None, None)
    dx, _, grads = reference.backward(layer.config, params, cache, d_out, None)
    return out, _flat(h), dx, grads


def check_layer(layer, module, x, d_out, steps):
    """{pass: check} of the rnncore layer against torch (or the numpy reference) on `steps` timesteps."""
    xs, ds = np.ascontiguousarray(x[:, :steps]), np.ascontiguousarray(d_out[:, :steps])
    oracle = "torch" if module is not None else "reference"
    want_out, want_h, want_dx, want_grads = (_torch_run(module, xs, ds) if module is not None
                                             else _reference_run(layer, xs, ds))
    dtype = x.dtype.name
    fwd, train = Comparison(dtype), Comparison(dtype)
    out, h = layer(xs)
    layer.zero_grad()
    out_t, h_t, backprop = layer.forward_train(xs)
    dx, _ = backprop(ds, None)
    for comparison, o, hs in ((fwd, out, h), (train, out_t, h_t)):
        comparison.add("output", o, want_out)
        hs = _flat(hs)
        if len(hs) != len(want_h):
            comparison.problems.append("h_n: %d array(s), expected %d" % (len(hs), len(want_h)))
        for i, (g, w) in enumerate(zip(hs, want_h)):
            comparison.add("h_n[%d]" % i, g, w)
    train.add("dx", dx, want_dx)
    for name, want in want_grads.items():
        train.add("grads[%s]" % name, layer.grads.get(name), want)
    layer.zero_grad()
    return {"fwd": fwd.result(TOLERANCE[dtype], oracle), "train": train.result(TOLERANCE[dtype], oracle)}


def _check_full(row, got, want):
    """After timing: the full-shape results of the last timed calls (output; training also dx)."""
    comparison = Comparison(row["dtype"])
    if row["pass"] == "fwd":
        comparison.add("output", got, want.numpy())
    else:
        comparison.add("output", got[0], want[0].detach().numpy())
        comparison.add("dx", got[1], want[1].numpy())
    full = comparison.result(FULL_TOLERANCE[row["dtype"]], "torch")
    row["check"]["full_shape_err"] = full["max_err"]
    if full["status"] != "ok" and row["check"]["status"] == "ok":
        row["check"] = dict(row["check"], status="FAIL", problems=row["check"]["problems"] + [
            "full shape: %s err %.3g" % (full["worst"], full["max_err"])] + full["problems"])


# ---------------------------------------------------------------------------------------------------
# Timing one cell at one shape

def rnncore_fn(layer, x, d_out, pass_, last):
    if pass_ == "fwd":
        def run():
            last["rnncore"] = layer(x)[0]
    else:
        def run():
            out, _, backprop = layer.forward_train(x)
            last["rnncore"] = (out, backprop(d_out, None)[0])
    return run


def torch_fn(module, x, d_out, pass_, last):
    torch = import_torch()
    if pass_ == "fwd":
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                last["torch"] = module(xt)[0]
    else:
        xt, dt = torch.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(d_out)

        def run():
            xt.grad = None
            out, _ = module(xt)
            out.backward(dt)
            last["torch"] = (out, xt.grad)
    return run


def error_text(exc):
    return "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")


def bench_cell(cell, shape_name, shape, combos, opts, seed, extras=None):
    """Rows (one per (dtype, threads) in `combos` and pass) of one cell at one shape.

    All variants of a pass (rnncore and torch at every dtype and thread count) are timed in one
    interleaved series. `extras(threads)` -> {name: callable} adds more functions to the series after
    the last variant on each thread count (benchmarks/ adds a control GEMM this way); their timings land
    in each row of that thread count under `name`. `opts` has repeats, warmup, min_time, check_steps,
    no_torch."""
    B, T, I, H = shape
    torch = None if opts.no_torch else import_torch()
    combos = sorted(combos, key=lambda c: (c[1], c[0]))   # fewest threads first: few thread switches
    inputs, variants = {}, {}
    for dtype in sorted({d for d, _ in combos}):
        rng = np.random.default_rng(seed)
        x, d_out = (rng.standard_normal((B, T, n)).astype(dtype) for n in (I, H))
        inputs[dtype] = (x, d_out, torch_module(cell, shape, dtype, seed) if torch is not None else None)
    for dtype, n in combos:
        x, d_out, module = inputs[dtype]
        rows = {p: {"cell": cell, "shape": shape_name, "B": B, "T": T, "I": I, "H": H, "pass": p,
                    "dtype": dtype, "threads": n, "flops": flops(cell, shape, p),
                    "rnncore": None, "torch": None, "ratio": None} for p in PASSES}
        layer = None
        try:
            layer = rnncore_layer(cell, shape, dtype, seed, module)
            with threads(n):
                checks = check_layer(layer, module, x, d_out, min(T, opts.check_steps))
        except Exception as exc:
            checks = {p: {"status": "ERROR", "oracle": None, "error": error_text(exc)} for p in PASSES}
        for p in PASSES:
            rows[p]["check"] = checks[p]
        variants[(dtype, n)] = (rows, layer)

    for p in PASSES:
        fns, last = {}, {c: {} for c in combos}
        for i, (c, (rows, layer)) in enumerate(variants.items()):
            x, d_out, module = inputs[c[0]]
            if rows[p]["check"]["status"] == "ok":
                fns[("rnncore",) + c] = rnncore_fn(layer, x, d_out, p, last[c])
            if module is not None:
                fns[("torch",) + c] = torch_fn(module, x, d_out, p, last[c])
            if extras and (i + 1 == len(combos) or combos[i + 1][1] != c[1]):
                fns.update({(name, None, c[1]): fn for name, fn in extras(c[1]).items()})
        # every sample runs on its variant's thread count, the last item of its name
        setups = {name: (lambda n=name[-1]: threads(n)) for name in fns}
        try:
            times = time_interleaved(fns, opts.repeats, opts.warmup, opts.min_time, setups) if fns else {}
        except Exception as exc:
            times = {}
            for rows, _ in variants.values():
                rows[p]["check"] = dict(rows[p]["check"], status="ERROR", error=error_text(exc))
        for c, (rows, _) in variants.items():
            row = rows[p]
            for impl in ("rnncore", "torch"):
                if (impl,) + c in times:
                    row[impl] = dict(times[(impl,) + c], gflops=row["flops"] / (times[(impl,) + c]["median_ms"] * 1e6))
            for (name, dtype, n), t in times.items():
                if dtype is None and n == c[1]:
                    row[name] = t
            if "rnncore" in last[c] and "torch" in last[c]:
                _check_full(row, last[c]["rnncore"], last[c]["torch"])
            if row["check"]["status"] != "ok":
                row["rnncore"] = None
            if row["rnncore"] and row["torch"]:
                row["ratio"] = row["torch"]["median_ms"] / row["rnncore"]["median_ms"]
    return [variants[c][0][p] for c in combos for p in PASSES]


# ---------------------------------------------------------------------------------------------------
# The torch training loop: stock torch.nn.GRU against the same model converted by rnncore.torch

def _gru_classifier(torch, shape):
    class Net(torch.nn.Module):
        """ids (batch, steps) -> logits (batch, steps, vocab)."""

        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(shape["vocab"], shape["embedding"])
            self.rnn = torch.nn.GRU(shape["embedding"], shape["hidden"], batch_first=True)
            self.head = torch.nn.Linear(shape["hidden"], shape["vocab"])

        def forward(self, ids):
            return self.head(self.rnn(self.embedding(ids))[0])

    return Net()


def training_loop_row(opts, seed, shape=None):
    """The stock and the converted model's training steps per second, in one interleaved series on
    the first of ``opts.threads``, after checking that their first step's loss and every gradient
    agree (relative to each array's largest value, within TOLERANCE["float32"]); a disagreeing
    conversion is not timed."""
    torch = import_torch()
    from rnncore.torch import convert
    if shape is None:
        B, T, I, H = SHAPES["S"]
        shape = {"batch": B, "steps": T, "vocab": TRAINING_VOCAB, "embedding": I, "hidden": H}
    n = opts.threads[0]
    torch.manual_seed(seed)
    models = {"torch": _gru_classifier(torch, shape)}
    models["rnncore"] = convert(models["torch"])
    gen = torch.Generator().manual_seed(seed)
    ids, target = (torch.randint(0, shape["vocab"], (shape["batch"], shape["steps"]), generator=gen)
                   for _ in range(2))
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}

    def step(name):
        model, opt = models[name], optimizers[name]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, shape["vocab"]), target.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    row = dict(shape, model="embedding -> GRU -> linear, cross-entropy, Adam", dtype="float32",
               threads=n, torch=None, rnncore=None, ratio=None)
    try:
        with threads(n):
            got = {}
            for name, model in models.items():
                model.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, shape["vocab"]),
                                                         target.reshape(-1))
                loss.backward()
                got[name] = [loss.detach()] + [p.grad for p in model.parameters()]
        err = max(float((a - b).abs().max() / max(1.0, float(b.abs().max())))
                  for a, b in zip(got["rnncore"], got["torch"]))
        tol = TOLERANCE["float32"]
        row["check"] = {"status": "ok" if err <= tol else "FAIL", "oracle": "torch", "max_err": err,
                        "tol": tol, "worst": "loss or gradient"}
        if row["check"]["status"] == "ok":
            setups = {name: (lambda: threads(n)) for name in models}
            times = time_interleaved({name: (lambda name=name: step(name)) for name in models},
                                     opts.repeats, opts.warmup, opts.min_time, setups)
            for name in models:
                row[name] = dict(times[name], steps_per_s=1e3 / times[name]["median_ms"])
            row["ratio"] = times["torch"]["median_ms"] / times["rnncore"]["median_ms"]
    except Exception as exc:
        row["check"] = {"status": "ERROR", "oracle": "torch", "error": error_text(exc)}
    return row


def render_training_row(row):
    """The training-loop row as a markdown table of one line."""
    head = ["| torch training loop | batch, steps, vocab, embedding, hidden | threads | check "
            "| torch.nn steps/s | rnncore.torch steps/s | speed-up |", "|---|---|---:|---|---:|---:|---:|"]
    check = row["check"]
    checked = check_text(check) if check["status"] != "ERROR" else "**ERROR** " + check["error"]
    return "\n".join(head + ["| %s | %d, %d, %d, %d, %d | %d | %s | %s | %s | %s |" % (
        row["model"], row["batch"], row["steps"], row["vocab"], row["embedding"], row["hidden"], row["threads"],
        checked, "%.1f" % row["torch"]["steps_per_s"] if row["torch"] else "–",
        "%.1f" % row["rnncore"]["steps_per_s"] if row["rnncore"] else "–",
        "%.2fx" % row["ratio"] if row["ratio"] else "–")])


# ---------------------------------------------------------------------------------------------------
# Output and command line

def ms_text(v):
    return "–" if v is None else "%.3f" % v if v < 1 else "%.2f" % v if v < 10 else "%.1f" % v if v < 100 else "%.0f" % v


def check_text(check):
    if check["status"] == "ok":
        return "ok %.0e" % check["max_err"] + (" (ref)" if check["oracle"] == "reference" else "")
    if check["status"] == "FAIL":
        return "**FAIL** %.1e (%s)" % (check["max_err"], check["worst"])
    return "**%s**" % check["status"]


def render_table(rows):
    """A markdown table: one line per row, rnncore and torch medians and their ratio."""
    lines = ["| cell | shape (B,T,I,H) | dtype | threads | pass | check | rnncore ms | torch ms | torch/rnncore "
             "| rnncore GFLOP/s |", "|---|---|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        rn, t = r["rnncore"], r["torch"]
        lines.append("| %s | %s (%d,%d,%d,%d) | %s | %d | %s | %s | %s | %s | %s | %s |" % (
            r["cell"], r["shape"], r["B"], r["T"], r["I"], r["H"], r["dtype"], r["threads"], r["pass"],
            check_text(r["check"]), ms_text(rn["median_ms"]) if rn else r["check"]["status"],
            ms_text(t["median_ms"]) if t else "–", "%.2f" % r["ratio"] if r["ratio"] else "–",
            "%.1f" % rn["gflops"] if rn else "–"))
    return "\n".join(lines)


def failures(rows):
    """One line per row whose check did not pass, saying why."""
    return ["- %s %s %s %s %s: %s" % (r["check"]["status"], r["cell"], r["shape"], r["dtype"], r["pass"],
                                       r["check"].get("error") or "; ".join(r["check"].get("problems") or [])
                                       or "max err %.3g in %s (tol %g)" % (r["check"]["max_err"],
                                                                          r["check"]["worst"], r["check"]["tol"]))
            for r in rows if r["check"]["status"] != "ok"]


def parse_list(text, allowed, what):
    lookup = {a.upper(): a for a in allowed}
    out = []
    for s in (s.strip() for s in text.split(",") if s.strip()):
        if s.upper() not in lookup:
            raise argparse.ArgumentTypeError("unknown %s %r: expected some of %s" % (what, s, ", ".join(allowed)))
        out.append(lookup[s.upper()])
    if not out:
        raise argparse.ArgumentTypeError("expected at least one %s" % what)
    return out


def _thread_list(text):
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("expected thread counts like 1,2, got %r" % text)
    if min(counts) < 1:
        raise argparse.ArgumentTypeError("thread counts must be >= 1")
    return counts


def build_parser(prog="rnncore bench"):
    p = argparse.ArgumentParser(
        prog=prog, description="Time rnncore's RNN/GRU/LSTM layers against PyTorch (when installed), after "
                               "checking each against torch.nn on the same weights. Exit status 1 if a check fails.")
    p.add_argument("--cells", type=lambda s: parse_list(s, list(GATES), "cell"), default=list(GATES),
                   help="comma-separated cells (default: RNN,GRU,LSTM)")
    p.add_argument("--shapes", type=lambda s: parse_list(s, list(SHAPES), "shape"), default=None,
                   help="comma-separated shapes: " + ", ".join("%s=(B=%d,T=%d,I=%d,H=%d)" % ((k,) + v)
                                                               for k, v in SHAPES.items())
                        + " (default: all; --quick: %s)" % ",".join(QUICK_SHAPES))
    p.add_argument("--dtype", "--dtypes", dest="dtypes", default=["float32"], metavar="float32[,float64]",
                   type=lambda s: parse_list(s, ["float32", "float64"], "dtype"), help="default float32")
    p.add_argument("--threads", type=_thread_list, default=None,
                   help="thread count(s), comma-separated (default: rnncore's, %d)" % rnncore.get_num_threads())
    p.add_argument("--quick", action="store_true",
                   help="shapes %s, 3 short samples each: about half a minute" % ",".join(QUICK_SHAPES))
    p.add_argument("--repeats", type=int, default=None,
                   help="timed samples per implementation, the median is reported (default 11, --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2, --quick 1)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per sample; short calls repeat inside a sample (default 0.05, --quick 0.01)")
    p.add_argument("--check-steps", type=int, default=CHECK_STEPS,
                   help="timesteps of the check before timing (default %d)" % CHECK_STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="time rnncore alone (checked against the numpy reference)")
    p.add_argument("--no-training-loop", action="store_true",
                   help="skip the torch training-loop row (a torch model's steps/s, stock and converted by "
                        "rnncore.torch; run when torch is installed and GRU is among the cells)")
    p.add_argument("--json", metavar="PATH", help="also write every number (samples, checks) here")
    return p


def finish_options(opts):
    """Fill the defaults that depend on --quick; refuse counts below 1."""
    opts.repeats = opts.repeats or (3 if opts.quick else 11)
    opts.warmup = opts.warmup or (1 if opts.quick else 2)
    opts.min_time = opts.min_time if opts.min_time is not None else (0.01 if opts.quick else 0.05)
    opts.threads = opts.threads or [rnncore.get_num_threads()]
    opts.shapes = opts.shapes if opts.shapes is not None else list(QUICK_SHAPES if opts.quick else SHAPES)
    if opts.repeats < 1 or opts.warmup < 1 or opts.check_steps < 1:
        raise SystemExit("--repeats, --warmup and --check-steps must be >= 1")
    return opts


def seed_of(opts, shape_name, cell):
    """A seed per shape and cell, the same in every run with the same --seed."""
    return opts.seed + 1000 * list(SHAPES).index(shape_name) + list(GATES).index(cell)


def finite(obj):
    """`obj` with every non-finite float (a failed check's error) written as a string: JSON has none."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj.item() if isinstance(obj, np.generic) else obj


def write_json(path, result):
    with open(path, "w") as f:
        json.dump(finite(result), f, indent=1)
        f.write("\n")


def _shape_text(name):
    B, T, I, H = SHAPES[name]
    return "%s (batch %d, %d steps, %d inputs, %d hidden)" % (name, B, T, I, H)


def summary(rows, opts, torch, seconds):
    """What a user wants to know after the table: what was compared, whether every layer was checked
    and agreed, and how much faster rnncore was, in sentences."""
    peer = "PyTorch %s (torch.nn, CPU)" % torch.__version__ if torch is not None else None
    lines = ["Compared: rnncore's %s layers%s, %s, %s thread%s, on %s." % (
        ", ".join(opts.cells), " against " + peer if peer else " alone (PyTorch is not installed)",
        " and ".join(opts.dtypes), " and ".join(map(str, opts.threads)), "s" * (opts.threads != [1]),
        "; ".join(_shape_text(s) for s in opts.shapes))]
    ok = [r for r in rows if r["check"]["status"] == "ok"]
    oracle = "torch.nn on the same weights" if peer else "rnncore's numpy reference"
    if len(ok) == len(rows):
        worst = max(r["check"]["max_err"] for r in rows)
        lines.append("Checked before timing: all %d layer runs agreed with %s (outputs, final states and, "
                     "for training, every gradient; largest relative difference %.0e)." % (len(rows), oracle, worst))
    else:
        lines.append("Checked before timing: %d of %d layer runs did NOT agree with %s and were not timed "
                     "(listed above); please report it." % (len(rows) - len(ok), len(rows), oracle))
    for p, what in (("fwd", "Inference (layer(x))"), ("train", "Training (forward and backward)")):
        ratios = sorted(r["ratio"] for r in rows if r["pass"] == p and r["ratio"])
        if not ratios:
            continue
        faster = sum(v > 1 for v in ratios)
        lines.append("%s: rnncore was faster in %d of %d cases; torch time / rnncore time %s at the median "
                     "(from %.2f to %.2f; above 1: rnncore faster)." % (
                         what, faster, len(ratios), "%.2f" % statistics.median(ratios), ratios[0], ratios[-1]))
    lines.append("Took %.0f s. Timings vary from run to run when other programs share the CPU%s." % (
        seconds, "; without --quick, rnncore bench times every shape with more samples" if opts.quick else ""))
    return "\n".join(lines)


def main(argv=None):
    """Entry point of `rnncore bench`. Returns the exit status: 0 when every check passed."""
    started = time.perf_counter()
    opts = finish_options(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    torch = None if opts.no_torch else import_torch()
    combos = [(d, n) for d in opts.dtypes for n in opts.threads]
    rows = []
    todo = [(shape_name, cell) for shape_name in opts.shapes for cell in opts.cells]
    for i, (shape_name, cell) in enumerate(todo):
        print("[%d/%d] checking, then timing %s at %s ..." % (i + 1, len(todo), cell, _shape_text(shape_name)),
              file=sys.stderr, flush=True)
        rows += bench_cell(cell, shape_name, SHAPES[shape_name], combos, opts, seed_of(opts, shape_name, cell))
    versions = {"rnncore": rnncore.__version__, "numpy": np.__version__,
                "torch": torch.__version__ if torch is not None else None}
    print("rnncore %s against %s; medians of %d interleaved samples; ratio = torch time / rnncore time\n" % (
        rnncore.__version__, "torch %s" % torch.__version__ if torch is not None else "no PyTorch (rnncore alone)",
        opts.repeats))
    print(render_table(rows))
    training = None
    if torch is not None and "GRU" in opts.cells and not opts.no_training_loop:
        print("[training loop] checking, then timing a torch model stock and converted ...", file=sys.stderr,
              flush=True)
        training = training_loop_row(opts, opts.seed)
        print("\n" + render_training_row(training))
    lines = failures(rows)
    if training is not None and training["check"]["status"] != "ok":
        lines += failures([dict(training, cell="training loop", shape="")])
    if lines:
        print("\n" + "\n".join(lines))
    print("\n" + summary(rows, opts, torch, time.perf_counter() - started))
    passed = not lines
    if opts.json:
        settings = {k: getattr(opts, k) for k in ("cells", "shapes", "dtypes", "threads", "repeats", "warmup",
                                                   "min_time", "check_steps", "seed", "quick")}
        write_json(opts.json, {"schema": SCHEMA, "versions": versions, "openblas_coretype":
                               os.environ.get("OPENBLAS_CORETYPE"), "settings": settings, "rows": rows,
                               "training_loop": training, "all_checks_passed": passed})
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
