"""Prepared data's reading side: the per-rank shard sampler, two gloo ranks reading disjoint
shards, and the device augmentation against the CPU transforms."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from fastalex.training import prepare
from fastalex.training.data import shards
from fastalex.training.data.transforms import BatchTrainTransform, train_transform
from image_helpers import make_stats, random_image, which_crop

DECODE_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared tree: 46 training images in shards of 5 (the last one short), 70 px."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(5)
    for split, n in (("train", 23), ("val", 2)):
        for c in range(2):
            for i in range(n):
                path = root / "src" / split / f"c{c}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(random_image(rng, 74, 71)).save(path)
    prepare.prepare(root / "src", root / "out", workers=0, size=70, shard_size=5,
                    progress=False)
    return root / "out"


class _Sizes:
    def __init__(self, sizes):
        self.shard_sizes = sizes


@pytest.mark.parametrize("sizes, replicas", [([5] * 9 + [1], 2), ([7, 3, 9, 1, 4], 3),
                                             ([2], 4), ([4] * 6, 1)])
def test_each_sample_once_per_epoch_on_one_rank(sizes, replicas):
    total = sum(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    shard_of = {i: int(np.searchsorted(starts, i, side="right")) - 1 for i in range(total)}
    orders = []
    for epoch in (0, 1):
        per_rank = []
        for rank in range(replicas):
            sampler = shards.ShardSampler(_Sizes(sizes), replicas, rank, seed=3)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            assert len(indices) == len(sampler) == -(-total // replicas)  # same step counts
            per_rank.append([i for i in indices if i != shards.NO_SAMPLE])
        everything = sorted(i for mine in per_rank for i in mine)
        assert everything == list(range(total))  # each sample exactly once over the ranks
        for mine in per_rank:
            # a rank reads whole shards but at most two partial ones (its piece's ends)
            touched = {shard_of[i] for i in mine}
            partial = [s for s in touched if sum(shard_of[i] == s for i in mine) < sizes[s]]
            assert len(partial) <= 2
        orders.append(per_rank)
    if total > replicas * 2:
        assert orders[0] != orders[1]  # a new order every epoch


def test_padding_is_dropped_from_a_batch(prepared):
    from fastalex.training.data.datasets import collate_skip_none

    data = shards.PreparedImages(prepared, "train")
    assert data[shards.NO_SAMPLE] is None
    images, targets = collate_skip_none([data[0], data[shards.NO_SAMPLE], data[1]])
    assert images.shape == (2, 3, 70, 70) and images.dtype == torch.uint8


@pytest.mark.parametrize("device", DECODE_DEVICES)
def test_device_augmentation_matches_the_cpu_transform(prepared, device):
    """The same decoded images through the CPU train_transform and the batched device one:
    each output is an exact crop (flipped or not) of the image minus the mean image, crops and
    flips are drawn alike, and the lighting shifts have the same spread along the PCA axes."""
    size, crop = 70, 67
    data = shards.PreparedImages(prepared, "train")
    images = torch.stack([data[i][0] for i in range(len(data))])  # uint8 [46, 3, 70, 70]
    stats = make_stats(images.float().mean(0), eigvals=(400.0, 100.0, 25.0))
    squares = images.double() - stats.mean_image.double()
    found = {"cpu-transform": [], "device": []}
    alphas = {"cpu-transform": [], "device": []}
    for pca in (0.0, 0.1):
        cpu_tf = train_transform(stats, size=size, crop=crop, pca_std=pca)
        batch_tf = BatchTrainTransform(stats, size=size, crop=crop, pca_std=pca).to(device)
        for seed in range(3):
            torch.manual_seed(seed)
            outs = {"cpu-transform": torch.stack([cpu_tf(im) for im in images]).double(),
                    "device": batch_tf(images.to(device)).cpu().double()}
            for name, out in outs.items():
                assert out.shape == (len(images), 3, crop, crop)
                for n in range(len(images)):
                    if pca == 0:
                        found[name].append(which_crop(out[n], squares[n], crop, atol=1e-3))
                    else:
                        alphas[name].append(_alpha(out[n], squares[n], crop, stats))
    for name in found:
        tops = torch.tensor([t for t, _, _ in found[name]], dtype=torch.float64)
        flips = sum(f for _, _, f in found[name]) / len(found[name])
        assert len(set(found[name])) > 20 and 0.35 < flips < 0.65, name
        assert 1.0 < tops.mean() < 3.0, name  # uniform over 0..3
        spread = torch.stack(alphas[name]).std().item()
        assert 0.08 < spread < 0.12, (name, spread)  # alpha ~ N(0, 0.1) per axis


@pytest.mark.parametrize("per_channel_mean", [False, True])
def test_the_gather_and_the_per_image_crops_agree(per_channel_mean):
    """The GPU's batched gather and the CPU's per-image slices: the same values, exactly, for
    the same draws (both run here on the CPU)."""
    size, crop = 12, 9
    images = torch.randint(0, 256, (7, 3, size, size), dtype=torch.uint8)
    stats = make_stats(torch.rand(3, size, size) * 255)
    transform = BatchTrainTransform(stats, size=size, crop=crop, pca_std=0.0,
                                    per_channel_mean=per_channel_mean)
    top, left = torch.randint(0, 4, (7,)), torch.randint(0, 4, (7,))
    flip = torch.tensor([True, False, True, True, False, False, True])
    gathered = transform._crop_gather(images, transform.mean, top, left, flip)
    sliced = transform._crop_each(images, transform.mean, top, left, flip)
    assert torch.equal(gathered, sliced)
    mean = transform.mean.expand(3, size, size)
    for n in range(7):
        t, l_ = int(top[n]), int(left[n])
        window = images[n, :, t:t + crop, l_:l_ + crop].float() - mean[:, t:t + crop, l_:l_ + crop]
        assert torch.equal(sliced[n], window.flip(-1) if flip[n] else window)


def _alpha(image, square, crop, stats):
    """The lighting's alpha [3] of ``image``: a crop of ``square`` plus one RGB shift."""
    size = square.shape[-1]
    for top in range(size - crop + 1):
        for left in range(size - crop + 1):
            window = square[:, top:top + crop, left:left + crop]
            for candidate in (window, window.flip(-1)):
                shift = image - candidate
                rgb = shift.mean(dim=(1, 2))
                if (shift - rgb[:, None, None]).abs().max() < 1e-2:
                    return stats.eigvecs.double().T @ rgb / stats.eigvals.double().sqrt()
    raise AssertionError("no crop plus a constant RGB shift matches")


_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from fastalex.training import builders, distributed, options

    info = distributed.init("cpu")
    args = options.resolve(["--data", sys.argv[1], "--image-size", "70", "--crop", "67",
                            "-b", "4", "-j", "1", "--device", "cpu", "--no-progress",
                            "--output-dir", sys.argv[2]])
    device = torch.device("cpu")
    data_dir, image_stats = builders.locate_data(args, info, Path(sys.argv[2]))
    train_set, val_set = builders.build_datasets(args, data_dir, image_stats)
    generator = torch.Generator()
    loader, _, sampler = builders.make_loaders(args, info, train_set, val_set, device, generator)
    prepare = builders.train_batch_preparer(args, image_stats, device)
    read = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        generator.manual_seed(builders.epoch_seed(args.seed, epoch, info.rank))
        names, steps = [], 0
        for batch in loader:
            steps += 1
            images, targets = prepare(batch)
            assert images.shape[1:] == (3, 67, 67)
        for i in sampler:
            if i >= 0:
                names.append(train_set.raw(i)[2])
        read[epoch] = {"names": names, "steps": steps,
                       "shards": sorted({train_set.locate(i)[0] for i in sampler if i >= 0})}
    Path(sys.argv[2], f"rank{info.rank}.json").write_text(json.dumps(read))
    distributed.shutdown()
""")


def test_two_gloo_ranks_read_disjoint_shards(prepared, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(prepared), str(tmp_path)],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    every = sorted(shards.PreparedImages(prepared, "train").raw(i)[2] for i in range(46))
    for epoch in ("0", "1"):
        r0, r1 = ranks[0][epoch], ranks[1][epoch]
        assert r0["steps"] == r1["steps"] == 6  # 23 images per rank, batches of 4
        assert not set(r0["names"]) & set(r1["names"])
        assert sorted(r0["names"] + r1["names"]) == every
        # 10 shards; at most one (the one cut at the pieces' boundary) is read by both
        assert len(set(r0["shards"]) & set(r1["shards"])) <= 1
    assert ranks[0]["0"]["names"] != ranks[0]["1"]["names"]


def test_training_cli_on_prepared_data_under_torchrun(prepared, tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "fastalex.train", "--data", str(prepared), "--image-size", "70", "--crop", "67",
         "-b", "4", "-j", "0", "--epochs", "1", "--optimizer", "sgd", "--lr", "0.01",
         "--device", "cpu", "--output-dir", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DDP check: parameters identical on all 2 ranks" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 6  # 46 images, 23 per rank, batches of 4
