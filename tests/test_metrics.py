"""fastalex.training.metrics: metrics.jsonl rewritten atomically, appended durably."""

import json
import os

import pytest

from fastalex.training import metrics


def test_write_append_read(tmp_path):
    path = tmp_path / metrics.METRICS
    rows = [{"epoch": 1, "val_top1_error": 0.5}, {"epoch": 2, "lr": 1e-3, "note": None}]
    metrics.write_jsonl(path, rows)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    metrics.append_jsonl(path, {"epoch": 3})
    assert metrics.read_jsonl(path) == [*rows, {"epoch": 3}]
    metrics.write_jsonl(path, rows[:1])  # a resumed run rewrites the rows it checkpointed
    assert metrics.read_jsonl(path) == rows[:1]
    metrics.write_jsonl(path, [])
    assert path.read_text() == "" and metrics.read_jsonl(path) == []


def test_write_jsonl_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / metrics.METRICS
    metrics.write_jsonl(path, [{"epoch": 1}])

    def fails(fd):
        raise OSError("disk full")  # the new rows are written, but never reach the disk

    monkeypatch.setattr(os, "fsync", fails)
    with pytest.raises(OSError, match="disk full"):
        metrics.write_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    monkeypatch.undo()
    assert metrics.read_jsonl(path) == [{"epoch": 1}]
    assert os.listdir(tmp_path) == [metrics.METRICS]
