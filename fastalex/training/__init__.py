"""The training application: what ``python -m fastalex.train`` and ``fastalex.evaluate`` run."""
