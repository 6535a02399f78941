"""``python -m fastalex.evaluate``: score a checkpoint (see :mod:`fastalex.training.evaluate`)."""

import sys

from fastalex.training.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
