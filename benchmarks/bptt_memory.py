"""BPTT within a memory budget: peak memory and time of one training step (forward_train + backprop)
of one LSTM layer, full BPTT against checkpointed (checkpoint="sqrt"), at T = 1,000, 10,000 and
100,000 steps (H = 256, B = 16, 64 inputs, float32). "step s" is a step that reuses the layer's workspace (every
step of a training loop after the first); "first step s" also allocates it (page faults).

    python benchmarks/bptt_memory.py                 # the table (about 3 minutes on 2 cores)
    python benchmarks/bptt_memory.py --T 1000 10000  # some lengths only
    python benchmarks/bptt_memory.py --cell gru

Each (T, mode) runs in a process of its own, so that its peak is its own: "arrays" is the peak of
numpy's allocations (tracemalloc), "RSS" the process's maximum resident set (Python, numpy, the
libraries and the input/output arrays included). The input, the output and its gradient (each
T * B * 256 floats) are part of both; what checkpointing removes is the per-step state kept for
backward. A full-BPTT step that would not fit in memory (over --max-gb) is not run: its memory is
extrapolated from the largest T that ran (memory is linear in T there) and marked so.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def child(cell, T, mode, H, B, I, threads):
    import tracemalloc
    import rnncore
    rnncore.set_num_threads(threads)
    layer = {"lstm": rnncore.LSTM, "gru": rnncore.GRU, "rnn": rnncore.RNN}[cell](I, H, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dout = rng.standard_normal((T, B, H), dtype=np.float32)
    ck = None if mode == "full" else mode
    out, _, bp = layer.forward_train(x[:8], checkpoint=ck)      # warm up the kernels, not the pool
    bp(dout[:8])
    layer = {"lstm": rnncore.LSTM, "gru": rnncore.GRU, "rnn": rnncore.RNN}[cell](I, H, seed=0)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out, _, bp = layer.forward_train(x, checkpoint=ck)
    t1 = time.perf_counter()
    kept = tracemalloc.get_traced_memory()[0] - base - out.nbytes
    bp(dout)
    t2 = time.perf_counter()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    inputs = x.nbytes + dout.nbytes
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # a second step reuses the layer's workspace, as every step of a training loop after the first
    del out, bp
    t3 = time.perf_counter()
    out, _, bp = layer.forward_train(x, checkpoint=ck)
    bp(dout)
    t4 = time.perf_counter()
    return {"forward_s": t1 - t0, "backward_s": t2 - t1, "first_step_s": t2 - t0, "step_s": t4 - t3,
            "kept_bytes": kept, "peak_bytes": peak + inputs, "rss_bytes": rss}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--I", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-gb", type=float, default=12.0, help="skip a run whose extrapolated memory exceeds this")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=2, metavar=("T", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        T, mode = int(a.child[0]), a.child[1]
        print(json.dumps(child(a.cell, T, mode, a.H, a.B, a.I, a.threads)))
        return
    rows, per_step = [], {}
    print(f"{a.cell.upper()}, H={a.H}, B={a.B}, inputs={a.I}, float32, {a.threads} threads; one training step")
    print(f"| T | BPTT | step s | time vs full | first step s | kept for backward MB | peak arrays MB | max RSS MB |")
    print(f"|---:|---|---:|---:|---:|---:|---:|---:|")
    for T in a.T:
        res = {}
        for mode in ("full", "sqrt"):
            if mode == "full" and mode in per_step and per_step[mode] * T / 2**30 > a.max_gb:
                res[mode] = {"extrapolated": True, "peak_bytes": per_step[mode] * T,
                             "kept_bytes": per_step["kept"] * T}
            else:
                cmd = [sys.executable, __file__, "--child", str(T), mode, "--cell", a.cell, "--H", str(a.H),
                       "--B", str(a.B), "--I", str(a.I), "--threads", str(a.threads)]
                res[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                if mode == "full":
                    per_step["full"] = res[mode]["peak_bytes"] / T
                    per_step["kept"] = res[mode]["kept_bytes"] / T
        for mode in ("full", "sqrt"):
            r = res[mode]
            label = "full" if mode == "full" else f"checkpoint sqrt (k={int(np.ceil(np.sqrt(T)))})"
            if r.get("extrapolated"):
                print(f"| {T:,} | {label} | not run | | | ~{r['kept_bytes'] / 2**20:,.0f} (extrapolated) | "
                      f"~{r['peak_bytes'] / 2**20:,.0f} (extrapolated) | |")
            else:
                ratio = (f"{r['step_s'] / res['full']['step_s']:.2f}"
                         if mode != "full" and not res["full"].get("extrapolated") else "")
                print(f"| {T:,} | {label} | {r['step_s']:.2f} | {ratio} | {r['first_step_s']:.2f} | {r['kept_bytes'] / 2**20:,.1f} | "
                      f"{r['peak_bytes'] / 2**20:,.0f} | {r['rss_bytes'] / 2**20:,.0f} |")
            rows.append(dict(T=T, mode=mode, **r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
