"""``python -m fastalex.prepare``: prepare an ImageFolder tree once for fast training (see
:mod:`fastalex.training.prepare`)."""

import sys

from fastalex.training.prepare import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
