"""``python -m fastalex.reproduce``: the paper's claims as experiments, with verdicts (see
:mod:`fastalex.training.study`)."""

import sys

from fastalex.training.study.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
