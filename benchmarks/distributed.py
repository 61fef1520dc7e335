"""Data-parallel throughput of the default char model: 1 rank x 2 threads against 2 ranks x 1 thread,
and the gradient allreduce's share of a step (docs/scaling.md reads its figures from this).

    python benchmarks/distributed.py [--steps 30] [--repeats 3]

The model, data and optimizer are `rnncore train`'s defaults (GRU 256, embedding 64, batch 32
streams x tbptt 64 characters per step, Adam, clip 1.0) on the standard library's source. Each
configuration runs as its own job (`python ... --worker` or `mpiexec -n 2 python ... --worker`),
alternating A, B, A, B... so that load on the machine hits both alike; the table gives medians.
Before timing, the 2-rank job checks that its replicas are identical (Trainer.check_replicas).

Per job: samples/s = characters (targets) trained per second over the timed steps (after 3 warm-up
steps); allreduce = wall time inside Replicas.sum for the gradient vector (Alltoallv reduce-scatter,
rank-order adds, Allgatherv), per step, and its share of the step's wall time, timed after a
barrier; the time spent in that barrier (waiting for the slower rank: load imbalance, on a shared
machine mostly other processes) is reported beside it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def worker(args):
    import numpy as np

    import rnncore
    from rnncore.cli import DEFAULTS
    from rnncore.models.sequence import SequenceModel
    from rnncore.training.data import CharVocab, TextStreams, stdlib_corpus
    from rnncore.training.optim import Adam
    from rnncore.training.trainer import Trainer

    distributed = args.ranks > 1
    text, _ = stdlib_corpus(max_chars=400_000)
    vocab = CharVocab.from_text(text)
    D = DEFAULTS
    model = SequenceModel(D["cell"], hidden_size=D["hidden_size"], num_layers=D["num_layers"],
                          vocab_size=len(vocab), embedding_dim=D["embedding_dim"], seed=0)
    opt = Adam(model.params, model.grads, lr=D["lr"], clip_norm=D["clip"])
    trainer = Trainer(model, opt, tbptt=D["tbptt"], seed=0, distributed=distributed)
    train = TextStreams(vocab.encode(text), D["batch_size"])
    spent = {"allreduce": 0.0, "wait": 0.0, "calls": 0}
    n_params = sum(p.size for p in model.params.values())
    if distributed:
        total = trainer._dist.sum

        def timed_sum(vec):
            if vec.size != n_params:        # the (loss, count, stop) triple
                return total(vec)
            # the gradient vector: first wait for the slower rank (a barrier: load imbalance, not
            # communication), then time the allreduce itself
            t0 = time.perf_counter()
            trainer._dist.comm.Barrier()
            t1 = time.perf_counter()
            out = total(vec)
            spent["wait"] += t1 - t0
            spent["allreduce"] += time.perf_counter() - t1
            spent["calls"] += 1
            return out
        trainer._dist.sum = timed_sum
    with rnncore.threads(args.threads):
        trainer.fit(train, max_steps=3)                 # warm-up
        if distributed:
            trainer.check_replicas()
        spent.update(allreduce=0.0, wait=0.0, calls=0)
        t0 = time.perf_counter()
        trainer.fit(train, max_steps=3 + args.steps)
        wall = time.perf_counter() - t0
    chars = args.steps * D["batch_size"] * D["tbptt"]
    if trainer.rank == 0:
        print(json.dumps({"ranks": args.ranks, "threads": args.threads, "steps": args.steps,
                          "params": int(n_params), "grad_bytes": int(n_params * np.dtype(np.float32).itemsize),
                          "seconds": wall, "samples_per_s": chars / wall, "step_ms": 1e3 * wall / args.steps,
                          "allreduce_ms": 1e3 * spent["allreduce"] / max(spent["calls"], 1),
                          "allreduce_share": spent["allreduce"] / wall,
                          "wait_ms": 1e3 * spent["wait"] / max(spent["calls"], 1)}), flush=True)


def run(config, steps):
    ranks, threads = config
    cmd = [sys.executable, HERE, "--worker", "--ranks", str(ranks), "--threads", str(threads), "--steps", str(steps)]
    if ranks > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    configs = [(1, 2), (2, 1)]
    runs = {c: [] for c in configs}
    for _ in range(args.repeats):
        for c in configs:
            runs[c].append(run(c, args.steps))
    base = statistics.median(r["samples_per_s"] for r in runs[(1, 2)])
    print(f"default char model ({runs[(1, 2)][0]['params']:,} parameters, gradient "
          f"{runs[(1, 2)][0]['grad_bytes'] / 2**20:.2f} MiB float32), {args.steps} steps x {args.repeats} "
          f"interleaved runs, medians")
    print("| ranks x threads | samples/s | step (ms) | allreduce (ms) | allreduce share | waiting for the other rank (ms) | vs 1x2 |")
    print("|---|---|---|---|---|---|---|")
    for c in configs:
        med = {k: statistics.median(r[k] for r in runs[c]) for k in
               ("samples_per_s", "step_ms", "allreduce_ms", "allreduce_share", "wait_ms")}
        ar = f"{med['allreduce_ms']:.2f}" if c[0] > 1 else "-"
        wait = f"{med['wait_ms']:.1f}" if c[0] > 1 else "-"
        share = f"{100 * med['allreduce_share']:.1f}%" if c[0] > 1 else "-"
        print(f"| {c[0]} x {c[1]} | {med['samples_per_s']:,.0f} | {med['step_ms']:.1f} | {ar} | {share} | {wait} | "
              f"{med['samples_per_s'] / base:.2f} |")
    print("all runs: " + json.dumps({f"{c[0]}x{c[1]}": [round(r["samples_per_s"]) for r in runs[c]]
                                     for c in configs}))


if __name__ == "__main__":
    main()
