"""Where the time goes: one rnncore layer's forward (inference) and training step split into the large
BLAS GEMMs (input projection before the time loop, unless it runs inside the loop; weight and input
gradients after it), the compiled time loops (per-step recurrent product, the input projection when
it runs step by step, gate math), the packing of the weights, and the rest (Python, numpy bias sums,
validation).

    python benchmarks/profile.py [--cells RNN,GRU,LSTM] [--shapes S,M,L,B1] [--repeats 7] [--threads N]
                                 [--dtype float32|float64]

Each part is timed around the call into rnncore._kernels (which releases the GIL and runs to
completion) and summed over a call; the row is the call with the median total time. float32 unless
--dtype says otherwise, batch_first, the shapes of the benchmark.
Not a test: it prints a table (see benchmarks/README.md, "Where the time goes").
"""
import argparse
import collections
import gc
import time

import numpy as np

import rnncore
from rnncore.engine import cells as _cells
from rnncore.benchmark import GATES, SHAPES

# the forward scan includes the input projection when it runs before the loop; Cell packs the weights
PARTS = {"forward": "fwd loop", "backward": "bwd loop", "matmul": "GEMMs", "Cell": "packing",
         "step_sums_add": "GEMMs", "step_colsum_add": "GEMMs", "step_dot_add": "GEMMs",
         "packed_rows_add": "GEMMs"}


class _Timed:
    """Stands in for rnncore._kernels inside rnncore.engine.cells, timing the calls named in PARTS
    (each under its part's name)."""

    def __init__(self, kernels, acc):
        self._k, self._acc = kernels, acc

    def __getattr__(self, name):
        f = getattr(self._k, name)
        if name not in PARTS:
            return f

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                self._acc[PARTS[name]] += time.perf_counter() - t0
        return timed


def profile(cell, shape, repeats, acc, dtype):
    B, T, I, H = SHAPES[shape]
    layer = getattr(rnncore, cell)(I, H, batch_first=True, seed=0, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(dtype)
    d = np.random.default_rng(1).standard_normal((B, T, H)).astype(dtype)

    def train():
        _, _, bp = layer.forward_train(x)
        bp(d)

    rows = {}
    for what, call in (("fwd", lambda: layer(x)), ("train", train)):
        for _ in range(2):
            call()
        runs = []
        for _ in range(repeats):
            acc.clear()
            t0 = time.perf_counter()
            call()
            run = {"total": time.perf_counter() - t0}
            run.update({k: acc[k] for k in ("GEMMs", "fwd loop", "bwd loop", "packing")})
            run["other"] = run["total"] - sum(acc.values())
            runs.append(run)
        runs.sort(key=lambda r: r["total"])
        rows[what] = {k: v * 1e3 for k, v in runs[len(runs) // 2].items()}   # the median call's parts
    flops = 2 * T * B * GATES[cell] * H * (I + H)            # forward matrix products, as bench counts
    loop_flops = 2 * T * B * GATES[cell] * H * H              # the per-step recurrent product
    # the input projection runs inside the forward loop, or as a large GEMM before it
    in_loop = _cells._step_projection(layer._short(layer.params, 0), x.reshape(B * T, I), B,
                                      rnncore.get_config())
    return rows, flops, loop_flops, in_loop


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="RNN,GRU,LSTM")
    ap.add_argument("--shapes", default="S,M,L,B1")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = ap.parse_args(argv)
    acc = collections.defaultdict(float)
    real = _cells.K
    _cells.K = _Timed(real, acc)
    gc.disable()
    try:
        with rnncore.threads(args.threads or rnncore.get_num_threads()):
            print(f"{args.dtype}, batch_first, {rnncore.get_num_threads()} threads; median ms of "
                  f"{args.repeats} calls (GFLOP/s of that part in brackets)\n")
            print("| cell | shape | pass | input projection | total ms | large GEMMs | fwd loop | bwd loop "
                  "| packing | other |")
            print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
            for cell in args.cells.split(","):
                for shape in args.shapes.split(","):
                    rows, flops, loop_flops, in_loop = profile(cell, shape, args.repeats, acc, args.dtype)
                    proj_flops = flops - loop_flops
                    # the forward scan runs the input projection, inside its loop or before it
                    fwd_loop_flops = loop_flops + proj_flops
                    for what, r in rows.items():
                        # after the loops: dW_ih, dx (2 x proj_flops) and dW_hh (loop_flops)
                        gemm_flops = 2 * proj_flops + loop_flops if what == "train" else 0

                        def rate(ms, fl):
                            return f"{ms:.2f} ({fl / ms / 1e6:.0f})" if ms > 0 else "–"
                        print(f"| {cell} | {shape} | {what} | {'in the loop' if in_loop else 'GEMM'} "
                              f"| {r['total']:.2f} | {rate(r['GEMMs'], gemm_flops)} "
                              f"| {rate(r['fwd loop'], fwd_loop_flops)} | "
                              f"{rate(r['bwd loop'], loop_flops) if what == 'train' else '–'} | "
                              f"{r['packing']:.2f} | {r['other']:.2f} |")
    finally:
        _cells.K = real
        gc.enable()


if __name__ == "__main__":
    main()
