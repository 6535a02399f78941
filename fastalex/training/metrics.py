"""``metrics.jsonl``: one JSON object per finished epoch, the run's learning curves."""

import json
import os
from pathlib import Path

from fastalex.training.atomic import write_atomic

METRICS = "metrics.jsonl"


def write_jsonl(path, rows) -> Path:
    """Replace ``path`` with ``rows``, one JSON line each, atomically (a resumed run rewrites
    the rows its checkpoint holds: a reader never sees half of the file)."""
    text = "".join(json.dumps(row) + "\n" for row in rows)
    return write_atomic(path, lambda f: f.write(text.encode()))


def append_jsonl(path, row: dict) -> None:
    """Add one row to ``path``, flushed to disk before returning."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path) -> list[dict]:
    """The rows of a metrics file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
