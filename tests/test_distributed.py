"""Data-parallel training on two CPU processes (gloo), launched by torchrun as a user would.

1. The training CLI under ``torchrun --nproc_per_node=2``: one metrics file and checkpoint
   written by rank 0 alone, and the run's own end-of-training check that every rank holds rank
   0's parameters bit for bit.
2. An independent check: two ranks train the fastalex AlexNet with DDP on different data,
   each saves its parameters, and this test compares the two files.
"""

import json
import os
import subprocess
import sys
import textwrap

import torch

from fastalex.training import checkpoint
from fastalex.training.data.builtin import ensure_builtin_dataset


def torchrun(args, tmp_path, timeout=240):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=tmp_path)


def test_training_cli_under_torchrun(tmp_path):
    data = ensure_builtin_dataset(tmp_path / "tiny", image_size=72, train_per_class=4,
                                  val_per_class=2, progress=False, workers=1)
    out = tmp_path / "run"
    proc = torchrun(["-m", "fastalex.train", "--data", data, "--image-size", "70", "--crop", "67",
                     "-b", "4", "-j", "0", "--epochs", "1", "--optimizer", "sgd", "--lr", "0.01",
                     "--device", "cpu",  # gloo, two processes, whatever GPUs the machine has
                     "--output-dir", out, "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("device: cpu x 2 processes (DDP, gloo)") == 1  # rank 0 only prints
    assert "DDP check: parameters identical on all 2 ranks" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    # 40 images, 4 per rank and step: 5 steps per rank; validation counts every image once
    assert rows[0]["step"] == 5
    state = checkpoint.load(out / "checkpoint.pt")
    assert len(state["rng"]) == 2  # every rank's generators, for an exact --resume


def test_a_rank_whose_whole_batch_is_unreadable_still_steps(tmp_path):
    """Rank 1's first batch is four corrupt files. It runs a weight-0 placeholder batch instead,
    so it joins that step's gradient all-reduce: the run finishes (no rank waits forever), both
    ranks take 5 steps and end with identical parameters, and each corrupt file is named on
    one clean stderr line (warned in the loader's worker processes, -j 1)."""
    from torch.utils.data.distributed import DistributedSampler
    from torchvision.datasets import ImageFolder

    data = ensure_builtin_dataset(tmp_path / "tiny", image_size=72, train_per_class=4,
                                  val_per_class=2, progress=False, workers=1)
    train = ImageFolder(data / "train")
    sampler = DistributedSampler(train, num_replicas=2, rank=1, shuffle=True, seed=0)
    sampler.set_epoch(0)
    bad = [train.samples[i][0] for i in list(sampler)[:4]]  # rank 1's first batch of 4
    for path in bad:
        with open(path, "wb") as f:
            f.write(b"not a jpeg")
    out = tmp_path / "run"
    proc = torchrun(["-m", "fastalex.train", "--data", data, "--image-size", "70", "--crop", "67",
                     "-b", "4", "-j", "1", "--epochs", "1", "--optimizer", "sgd", "--lr", "0.01",
                     "--seed", "0", "--stats-images", "1", "--device", "cpu",
                     "--output-dir", out, "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DDP check: parameters identical on all 2 ranks" in proc.stdout
    assert checkpoint.load(out / "checkpoint.pt")["step"] == 5
    lines = proc.stderr.splitlines()
    for path in bad:
        named = [line for line in lines if path in line]
        assert len(named) == 1, proc.stderr
        assert named[0].startswith(f"warning: skipping unreadable image {path}: "), named
    assert not [line for line in lines if "Warning" in line or "warnings.warn" in line], \
        proc.stderr


_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from fastalex.models import alexnet

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = alexnet(3, image_size=67)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    torch.manual_seed(100 + rank)  # different data and dropout masks on each rank
    for _ in range(3):
        x = torch.randn(2, 3, 67, 67) * 50
        y = torch.randint(0, 3, (2,))
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"final": model.state_dict(), "initial": initial}, f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()
""")


def test_ddp_replicas_stay_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    proc = torchrun([script, tmp_path], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key
    # and training did move them
    assert not torch.equal(r0["final"]["features.conv1.weight"],
                           r0["initial"]["features.conv1.weight"])
