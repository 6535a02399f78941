"""fastalex.training.checkpoint: atomic writes (a crash mid-write keeps the previous file
loadable, so does a SIGKILL at any moment), every RNG state restored, weights_only loading."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from fastalex.training import checkpoint


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "ck.pt"
    obj = {"model": {"w": torch.randn(3, 4)}, "epoch": 3, "args": {"lr": 0.1, "data": None}}
    checkpoint.save(obj, path)
    back = checkpoint.load(path)
    assert back["epoch"] == 3 and back["args"] == obj["args"]
    assert torch.equal(back["model"]["w"], obj["model"]["w"])
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left
    mode = path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # like a file open() creates, not mkstemp's 0600


def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"epoch": 1, "w": torch.ones(1000)}, path)

    real_save = torch.save

    def crash_half_way(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # a torn file on disk...
        raise OSError("disk full")  # ...and the writer dies

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save({"epoch": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    back = checkpoint.load(path)
    assert back["epoch"] == 1 and torch.equal(back["w"], torch.ones(1000))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


_WRITER = textwrap.dedent("""
    import sys, torch
    from fastalex.training import checkpoint
    path = sys.argv[1]
    big = torch.randn(2_000_000)  # 8 MB: each write takes a while (fsync included)
    for epoch in range(1, 1_000_000):
        checkpoint.save({"epoch": epoch, "w": big, "check": big.sum()}, path)
        print(epoch, flush=True)
""")


def test_killed_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process that rewrites its checkpoint in a loop, at arbitrary moments: the file
    always loads, and it is a complete checkpoint."""
    path = tmp_path / "checkpoint.pt"
    rng = random.Random(0)
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip()  # at least one checkpoint written
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        back = checkpoint.load(path)
        assert back["epoch"] >= 1
        assert torch.equal(back["w"].sum(), back["check"])
    # The killed writers' temporaries are cleaned up by the next run.
    checkpoint.remove_stale_temporaries(tmp_path)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_rng_state_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(5)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    gen.manual_seed(4)
    checkpoint.save({"rng": checkpoint.rng_state(gen)}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    gen.manual_seed(9)
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.pt")["rng"], gen)
    got = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=gen))
    assert got[:2] == expected[:2]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])
