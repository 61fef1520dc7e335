"""A torch training loop, stock and converted: steps per second of one torch model trained with torch.

    python benchmarks/torch_training.py [--batch 32] [--steps 50] [--embedding 32] [--vocab 64]
                                        [--hidden 64,128] [--threads 1,2] [--repeats 11] [--json PATH]

The model is embedding -> GRU -> linear (batch_first), cross-entropy, torch.optim.Adam: once with
torch.nn.GRU, once after ``rnncore.torch.convert`` (the same weights; only the GRU's forward and
backward change). Each hidden size and thread count is one row of ``rnncore bench``'s training-loop
row (rnncore/benchmark.py, ``training_loop_row``): the first step's loss and every gradient are
checked against the stock model's, then one training step per call is timed, both models in one
interleaved series (medians). A markdown table is printed; exit status 1 if a check failed.
"""
import argparse
import json
import os
import sys

# this folder's profile.py would shadow the standard library's profile, which torch.optim imports
# (through torch._dynamo and cProfile): run with this folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from rnncore import benchmark  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    B, T, I, H = benchmark.SHAPES["S"]
    p.add_argument("--batch", type=int, default=B)
    p.add_argument("--steps", type=int, default=T)
    p.add_argument("--vocab", type=int, default=benchmark.TRAINING_VOCAB)
    p.add_argument("--embedding", type=int, default=I)
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128])
    p.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-time", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH")
    opts = p.parse_args(argv)
    rows = []
    for n in opts.threads:
        for hidden in opts.hidden:
            shape = {"batch": opts.batch, "steps": opts.steps, "vocab": opts.vocab,
                     "embedding": opts.embedding, "hidden": hidden}
            print("threads %d, hidden %d ..." % (n, hidden), file=sys.stderr, flush=True)
            run = argparse.Namespace(threads=[n], repeats=opts.repeats, warmup=opts.warmup,
                                     min_time=opts.min_time)
            rows.append(benchmark.training_loop_row(run, opts.seed, shape))
    tables = [benchmark.render_training_row(r).splitlines() for r in rows]
    print("\n".join(tables[0] + [t[-1] for t in tables[1:]]))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(benchmark.finite(rows), f, indent=1)
    return 0 if all(r["check"]["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
