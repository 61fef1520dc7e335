"""``python -m rnncore``: the same as the ``rnncore`` command (rnncore.cli)."""
import sys

from rnncore.cli import main

if __name__ == "__main__":
    sys.exit(main())
