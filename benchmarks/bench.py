"""Time rnncore against PyTorch and the numpy reference; see benchmarks/README.md.

    python benchmarks/bench.py [--quick] [--cells RNN,GRU,LSTM] [--shapes S,M,L,B1] [--json PATH] ...

The same as `python -m rnncore.benchmark` (and `rnncore bench`); `--help` lists the options.
"""
import sys

from rnncore.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
