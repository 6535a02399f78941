"""fastalex.training.atomic: a file replaced atomically, whatever its writer does."""

import os

import pytest

from fastalex.training import atomic


def test_write_atomic_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    atomic.write_atomic(path, lambda f: f.write(b"first"))
    atomic.write_atomic(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["file.txt"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_bytes(b"old")

    def dies(f):
        f.write(b"half of the new")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic(path, dies)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_remove_stale_temporaries_only_removes_those_of_the_names(tmp_path):
    for name in (".checkpoint.pt.abc.tmp", ".metrics.jsonl.x1.tmp", ".other.pt.y.tmp",
                 "checkpoint.pt", "notes.tmp"):
        (tmp_path / name).write_text("x")
    atomic.remove_stale_temporaries(tmp_path, ("checkpoint.pt", "metrics.jsonl"))
    assert sorted(os.listdir(tmp_path)) == [".other.pt.y.tmp", "checkpoint.pt", "notes.tmp"]
    atomic.remove_stale_temporaries(tmp_path / "missing", ("checkpoint.pt",))  # no error
