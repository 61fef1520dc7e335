"""Setup shared by the example scripts: their common command-line options, thread limits and
saving the plot.

Not an example itself. Each example stays a one-command script (``python examples/forecast.py``):
Python puts the running script's folder, examples/, first on sys.path, so ``import _common`` finds
this file from any working directory. Import it after setting OMP_WAIT_POLICY (it imports rnncore).
"""
import os

from threadpoolctl import threadpool_limits

import rnncore

EXAMPLES_DIR = os.path.dirname(os.path.abspath(__file__))
# the clone's one output folder, which .gitignore covers (rnncore train writes its checkpoints there too)
OUT_DIR = os.path.join(os.path.dirname(EXAMPLES_DIR), "runs", "examples")


def add_common_arguments(ap):
    """--seed, --threads and --out (the directory of the PNG; default: runs/examples/ in the clone)."""
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="rnncore and BLAS threads (for problems this small, 1 is fastest)")
    ap.add_argument("--out", default=OUT_DIR, help="directory of the PNG, created if needed (default: %(default)s)")


def run_with_threads(run, args):
    """run(args) with rnncore's and the BLAS's threads limited to args.threads."""
    with rnncore.threads(args.threads), threadpool_limits(args.threads, user_api="blas"):
        return run(args)


def save_figure(fig, args, name):
    """Lay out fig, write it as args.out/name (PNG), close it and say where it went; returns the path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"\nwrote {path}")
    return path
