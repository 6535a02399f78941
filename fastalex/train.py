"""``python -m fastalex.train``: train the paper's AlexNet (see :mod:`fastalex.training.train`)."""

import sys

from fastalex.training.train import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
