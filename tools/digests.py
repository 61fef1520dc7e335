"""Digests of every layer result over a grid of cells, variants, dtypes, layouts, lengths, thread
counts and kernel paths: run it before and after a change of the compiled core and compare.

    python tools/digests.py out.json            # write
    python tools/digests.py out.json --check base.json   # compare with an earlier run

Each case hashes (SHA-256 of the raw bytes) the output, final states, input and initial-state
gradients and every parameter gradient of one forward_train/backprop with nonzero h0 (and c0).
"""
import contextlib
import hashlib
import itertools
import json
import sys

import numpy as np

import rnncore


@contextlib.contextmanager
def path(step_gemm, step_projection, num_threads):
    """Select a kernel path and force `num_threads` (even for small problems)."""
    if hasattr(rnncore, "config_context"):
        with rnncore.config_context(step_gemm=step_gemm, step_projection=step_projection,
                                    step_projection_min_rows=1, small_work_flops=0), \
                rnncore.threads(num_threads):
            yield
        return
    # a tree from before the configuration (rnncore <= a9e858a): its module globals
    import importlib
    _cells, _threads = (importlib.import_module(f"rnncore.{m}") for m in ("_cells", "_threads"))
    old = (_threads._state["step_gemm"], _cells.STEP_PROJECTION, _cells.STEP_PROJECTION_ROWS,
           _threads.SMALL_WORK_FLOPS)
    _threads._state["step_gemm"] = step_gemm
    _cells.STEP_PROJECTION, _cells.STEP_PROJECTION_ROWS = step_projection, 1
    _threads.SMALL_WORK_FLOPS = 0
    try:
        with rnncore.threads(num_threads):
            yield
    finally:
        (_threads._state["step_gemm"], _cells.STEP_PROJECTION, _cells.STEP_PROJECTION_ROWS,
         _threads.SMALL_WORK_FLOPS) = old


CELLS = {
    "rnn_tanh": (rnncore.RNN, {}), "rnn_relu": (rnncore.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnncore.LSTM, {}), "lstm_peep": (rnncore.LSTM, {"peephole": True}),
    "lstm_proj": (rnncore.LSTM, {"proj_size": 5}),
    "lstm_proj_peep": (rnncore.LSTM, {"proj_size": 5, "peephole": True}),
    "gru": (rnncore.GRU, {}), "gru_before": (rnncore.GRU, {"reset_after": False}),
}


def h(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def case(cell, H, dtype, bf, lens, bias, layers_bi, paths):
    cls, kw = CELLS[cell]
    L, bi = layers_bi
    T, B, I = 9, 7, 5
    if "proj" in cell and H <= kw["proj_size"]:
        return None
    layer = cls(I, H, num_layers=L, bidirectional=bi, batch_first=bf, bias=bias, dtype=dtype,
                seed=3, **kw)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(dtype)
    D = 2 if bi else 1
    P = layer._P
    h0 = (rng.standard_normal((L * D, B, P)) * 0.5).astype(dtype)
    hx = h0
    if cls is rnncore.LSTM:
        hx = (h0, (rng.standard_normal((L * D, B, H)) * 0.5).astype(dtype))
    lengths = [9, 4, 9, 1, 7, 8, 2] if lens else None
    with path(*paths):
        out, hn, bp = layer.forward_train(x, hx, lengths=lengths)
        dout = rng.standard_normal(out.shape).astype(dtype)
        if cls is rnncore.LSTM:
            dhn = tuple(rng.standard_normal(a.shape).astype(dtype) for a in hn)
        else:
            dhn = rng.standard_normal(hn.shape).astype(dtype)
        dx, dhx = bp(dout, dhn)
        inf_out, inf_hn = layer(x, hx, lengths=lengths)
    arrays = {"out": out, "dx": dx, "inf_out": inf_out}
    for k, a in (("hn", hn), ("dhx", dhx), ("inf_hn", inf_hn)):
        for i, v in enumerate(a if isinstance(a, tuple) else (a,)):
            arrays[f"{k}{i}"] = v
    for k, g in sorted(layer.grads.items()):
        arrays["g." + k] = g
    return {k: h(v) for k, v in arrays.items()}


def grid():
    paths = [("own", True, 1), ("own", True, 2), ("own", False, 1), ("own", False, 2),
             ("blas", False, 1), ("blas", False, 2)]
    for cell, H, dtype, bf, lens, bias, lb, p in itertools.product(
            CELLS, (7, 16, 33, 64), ("float32", "float64"), (False, True), (False, True), (True, False),
            ((1, False), (2, True)), paths):
        if not bias and (H != 16 or lb != (1, False)):
            continue
        yield f"{cell}|H{H}|{dtype}|bf{int(bf)}|len{int(lens)}|bias{int(bias)}|L{lb[0]}bi{int(lb[1])}|{'-'.join(map(str, p))}", \
            (cell, H, dtype, bf, lens, bias, lb, p)


def main():
    res = {}
    for name, args in grid():
        r = case(*args)
        if r is not None:
            res[name] = r
    with open(sys.argv[1], "w") as f:
        json.dump(res, f, indent=0, sort_keys=True)
    print(f"{len(res)} cases, {sum(len(v) for v in res.values())} arrays -> {sys.argv[1]}")
    if "--check" in sys.argv:
        with open(sys.argv[sys.argv.index("--check") + 1]) as f:
            base = json.load(f)
        bad = [(k, a) for k in base for a in base[k] if res.get(k, {}).get(a) != base[k][a]]
        missing = [k for k in base if k not in res]
        print(f"compared {len(base)} cases: {len(bad)} arrays differ, {len(missing)} cases missing")
        for k, a in bad[:30]:
            print("  DIFF", k, a)
        sys.exit(1 if bad or missing else 0)


if __name__ == "__main__":
    main()
