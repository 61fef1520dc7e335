"""A/B speed of two builds of rnncore, in alternating processes (an interleaved series).

    python benchmarks/ab.py OLD_TREE NEW_TREE [--cells RNN,GRU,LSTM] [--shapes S,M,L,B1]
                            [--rounds 7] [--threads 2] [--dtype float32]

Each tree is a source checkout with its compiled core built in place (``python setup.py build_ext
--inplace``). For every cell, shape and pass (the inference call ``layer(x)`` and a training step
``forward_train`` + ``backprop``, batch_first, the shapes of ``rnncore bench``), the two builds are
timed in turn (ABBA order over rounds), each in a fresh process that warms up and then times a few
samples; a row reports the median of each build's samples and old / new (above 1: the new build is
faster). Processes, not one process, because two builds of one extension cannot be imported together.

How many rounds: on the shared 2-vCPU machines of this project a process runs fast or slow as a
whole (by 10-50% at S and B1), so a row's median moves with how many of each build's processes
landed in the slow state. With 6-8 rounds, rows whose code had not changed moved by -8% to +16%
between runs; with 30 rounds (60 processes a row, about 25 minutes for the whole table) most rows
hold within a few percent, but a single run still had one S or B1 row of 24 off by 4-30%, a
different row each time. Take two runs and pool their samples per row (`--json`, then the medians
of the pooled lists). Run it on a quiet machine: another process on the second CPU makes a
2-thread call wait for a descheduled thread at every step.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import rnncore
cell, shape, what, dtype, threads, samples = sys.argv[1:7]
B, T, I, H = {"S": (32, 50, 32, 64), "M": (64, 100, 128, 256), "L": (128, 50, 512, 512),
              "B1": (1, 200, 64, 128)}[shape]
rnncore.set_num_threads(int(threads))
layer = getattr(rnncore, cell)(I, H, batch_first=True, dtype=np.dtype(dtype), seed=0)
x = np.random.default_rng(0).standard_normal((B, T, I)).astype(dtype)
d = np.ones((B, T, H), dtype)
def call():
    if what == "fwd":
        layer(x)
    else:
        out, _, bp = layer.forward_train(x)
        bp(d)
for _ in range(2):
    call()
times = []
for _ in range(int(samples)):
    n, t0 = 0, time.perf_counter()
    while True:
        call()
        n += 1
        el = time.perf_counter() - t0
        if el > 0.05:
            break
    times.append(el / n)
print(json.dumps(times))
"""


def time_tree(tree, cell, shape, what, dtype, threads, samples):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    r = subprocess.run([sys.executable, "-c", CHILD, cell, shape, what, dtype, str(threads),
                        str(samples)], env=env, cwd=os.path.abspath(tree), capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--cells", default="RNN,GRU,LSTM")
    ap.add_argument("--shapes", default="S,M,L,B1")
    ap.add_argument("--passes", default="fwd,train")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    print(f"{a.dtype}, {a.threads} threads, batch_first; median ms of {a.rounds} x {a.samples} samples "
          f"per build, builds alternating (ABBA) in fresh processes\n")
    print("| cell | shape | pass | old ms | new ms | old / new |")
    print("|---|---|---|---:|---:|---:|")
    for cell in a.cells.split(","):
        for shape in a.shapes.split(","):
            for what in a.passes.split(","):
                got = {"old": [], "new": []}
                for r in range(a.rounds):
                    order = ("old", "new") if r % 2 == 0 else ("new", "old")
                    for which in order:
                        got[which] += time_tree(getattr(a, which), cell, shape, what, a.dtype,
                                                a.threads, a.samples)
                old, new = statistics.median(got["old"]), statistics.median(got["new"])
                rows.append({"cell": cell, "shape": shape, "pass": what, "old": got["old"],
                             "new": got["new"], "ratio": old / new})
                print(f"| {cell} | {shape} | {what} | {old * 1e3:.3g} | {new * 1e3:.3g} | "
                      f"{old / new:.3f} |", flush=True)
    print(f"\nlowest old / new: {min(r['ratio'] for r in rows):.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
