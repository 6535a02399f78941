"""python -m fastalex.prepare: the prepared tree, its statistics, resume, unreadable files,
refusals, and training on it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastalex.training import options, prepare, train
from fastalex.training.data import shard_writer, shards, stats
from fastalex.training.data.datasets import SafeImageFolder
from image_helpers import random_image
from train_helpers import TINY, main_in_process, rows

SIZE = 70  # TINY's --image-size


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """An ImageFolder tree of random smooth JPEGs (upscaled noise: JPEG keeps them within a few
    levels) of assorted sizes and aspect ratios, 3 classes."""
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(3)
    for split, n in (("train", 7), ("val", 2)):
        for c in range(3):
            for i in range(n):
                h, w = rng.integers(60, 110, size=2)
                path = root / split / f"c{c}" / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                small = Image.fromarray(random_image(rng, h // 8, w // 8))
                small.resize((w, h), Image.BICUBIC).save(path, quality=90)
    return root


def _prepare(src, out, **kw):
    kw = {"workers": 0, "size": SIZE, "shard_size": 4, "progress": False, **kw}
    return prepare.prepare(src, out, **kw)


def _files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def test_prepared_tree_images_and_statistics(source, tmp_path):
    manifest = _prepare(source, tmp_path / "out", quality=100)
    out = tmp_path / "out"
    assert shards.is_prepared(out)
    assert manifest["classes"] == ["c0", "c1", "c2"]
    assert manifest["splits"]["train"]["shard_sizes"] == [4, 4, 4, 4, 4, 1]
    assert manifest["splits"]["val"]["num_images"] == 6
    train_set = shards.PreparedImages(out, "train")
    reference = SafeImageFolder(source / "train")
    by_name = {str(Path(p).relative_to(source / "train")): (p, t) for p, t in reference.samples}
    seen = set()
    for i in range(len(train_set)):
        image, target = train_set[i]
        _, _, name = train_set.raw(i)
        rel = str(Path(name).relative_to(out / "train"))
        path, ref_target = by_name[rel]
        seen.add(rel)
        assert target == ref_target and image.dtype == torch.uint8
        square = torch.from_numpy(shard_writer.load_square(path, SIZE)).permute(2, 0, 1)
        assert image.shape == square.shape == (3, SIZE, SIZE)
        error = (image.float() - square.float()).abs().mean()
        shifted = (image[:, :, 1:].float() - square[:, :, :-1].float()).abs().mean()
        assert error < 4 and error < shifted  # JPEG's loss only: the same pixels, not moved
    assert seen == set(by_name)
    # the shards mix the classes (the training split was shuffled before it was cut)
    first = [train_set[i][1] for i in range(4)]
    assert len(set(first)) > 1
    # the statistics equal stats.py's on the same preprocessed images (before the re-encoding)
    found = stats.load_stats(out / manifest["stats"]["file"], manifest["stats"]["key"])
    expected = stats.compute_stats(stats._open(source / "train", SIZE), size=SIZE,
                                   progress=False)
    assert found.num_images == expected.num_images == 21 and found.size == SIZE
    torch.testing.assert_close(found.mean_image, expected.mean_image, rtol=0, atol=1e-4)
    torch.testing.assert_close(found.eigvals, expected.eigvals, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(found.eigvecs.abs(), expected.eigvecs.abs(), rtol=0, atol=1e-4)


def test_an_interrupted_prepare_resumes(source, tmp_path, monkeypatch):
    """A run that dies in its 4th shard keeps 3 complete shards and no trace of the 4th but its
    temporary file; the rerun writes only the missing shards, and the result is byte for byte
    that of a run never interrupted."""
    whole = tmp_path / "whole"
    _prepare(source, whole)
    real = shard_writer.write_shard
    calls, died = [], []

    def dies_in_the_fourth(split_dir, index, samples, **kw):
        calls.append((split_dir.name, index))
        if len(calls) == 4 and not died:
            died.append(index)
            (split_dir / ".shard-00003.jpgs.abc.tmp").write_bytes(b"half")
            raise KeyboardInterrupt
        return real(split_dir, index, samples, **kw)

    out = tmp_path / "out"
    monkeypatch.setattr(shard_writer, "write_shard", dies_in_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        _prepare(source, out)
    assert not shards.is_prepared(out)
    assert sorted(p.name for p in (out / "train").glob("*.json")) == [
        f"shard-0000{i}.json" for i in range(3)]
    calls.clear()
    assert prepare.main(["--data", str(source), "--out", str(out), "-j", "0", "--size", str(SIZE),
                         "--shard-size", "4", "--no-progress"]) == 0
    assert calls == [("train", 3), ("train", 4), ("train", 5), ("val", 0), ("val", 1)]
    assert _files(out) == _files(whole)


def test_unreadable_files_are_skipped_by_name(source, tmp_path, capsys):
    src = tmp_path / "src"
    for path in source.rglob("*.jpg"):
        target = src / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    bad = [src / "train" / "c1" / "broken.jpg", src / "val" / "c2" / "truncated.jpg"]
    bad[0].write_bytes(b"not a jpeg at all")
    bad[1].write_bytes((src / "val" / "c2" / "0.jpg").read_bytes()[:200])
    code = prepare.main(["--data", str(src), "--out", str(tmp_path / "out"), "-j", "1",
                         "--size", str(SIZE), "--shard-size", "4", "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err.splitlines()
    for path in bad:
        named = [line for line in err if str(path) in line]
        assert len(named) == 1 and named[0].startswith(f"warning: skipping unreadable image "
                                                       f"{path}: "), err
    manifest = shards.read_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["num_images"] == 21
    assert manifest["splits"]["train"]["skipped"] == [str(bad[0])]
    assert manifest["splits"]["val"]["skipped"] == [str(bad[1])]


@pytest.mark.parametrize("content", ["a file", "a foreign folder", "other settings"])
def test_refuses_an_output_directory_that_holds_something_else(source, tmp_path, capsys,
                                                               content):
    out = tmp_path / "out"
    out.mkdir()
    if content == "a file":
        (out / "notes.txt").write_text("mine")
    elif content == "a foreign folder":
        (out / "train").mkdir()
        (out / "train" / "cat.jpg").write_bytes(b"x")
    else:
        _prepare(source, out)
    before = _files(out)
    argv = ["--data", str(source), "--out", str(out), "-j", "0", "--size", "64", "--no-progress"]
    assert prepare.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m fastalex.prepare: error: --out {out}: holds ")
    assert len(err.strip().splitlines()) == 1
    assert _files(out) == before  # nothing touched


@pytest.mark.parametrize("argv, message", [
    (["--quality", "0"], "--quality must be in 1-100"),
    (["--shard-size", "0"], "--shard-size must be >= 1"),
    (["-j", "-1"], "-j/--workers must be >= 0"),
])
def test_bad_arguments_are_one_line_errors(source, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert prepare.main(["--data", str(source), "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_train_on_prepared_data(source, tmp_path):
    """A tiny epoch via options.resolve + train.run reads the prepared data: every training
    image once, the statistics from the prepare step."""
    out = tmp_path / "prepared"
    _prepare(source, out)
    args = options.resolve(["--data", str(out), *TINY, "-b", "4", "--epochs", "1",
                            "--output-dir", str(tmp_path / "run")])
    import fastalex

    with fastalex.reference_ops():
        result = train.run(args)
    assert result["epochs_done"] == 1
    assert result["history"][0]["step"] == 6  # 21 images, batches of 4
    assert np.isfinite(result["history"][0]["train_loss"])
    # the statistics file the prepare step wrote is the one used: no other was made
    assert sorted(p.name for p in out.glob("fastalex-stats-*")) == [f"fastalex-stats-{SIZE}px.pt"]
    # --image-size other than the prepared size: a one-line error
    code = main_in_process(["--data", out, *TINY, "--image-size", "80", "--epochs", "1",
                            "--output-dir", tmp_path / "run2"])
    assert code == 2 and not (tmp_path / "run2").exists()
    assert rows(tmp_path / "run")[0]["epoch"] == 1
    assert json.loads((out / shards.MANIFEST).read_text())["size"] == SIZE


def _batches(args, epochs=2):
    from fastalex.training import builders
    from fastalex.training.distributed import DistInfo

    info, device = DistInfo(), torch.device("cpu")
    data_dir, image_stats = builders.locate_data(args, info, Path(args.output_dir))
    train_set, val_set = builders.build_datasets(args, data_dir, image_stats)
    generator = torch.Generator()
    loader, val, _ = builders.make_loaders(args, info, train_set, val_set, device, generator)
    prepare_batch = builders.train_batch_preparer(args, image_stats, device)
    out = []
    for epoch in range(epochs):
        torch.manual_seed(100 + epoch)
        generator.manual_seed(builders.epoch_seed(args.seed, epoch, 0))
        out += [prepare_batch(batch) for batch in loader]
    return out, [batch for batch in val]


def test_gpu_decode_of_prepared_data_makes_the_same_batches(source, tmp_path):
    """--gpu-decode on prepared data decodes the same bytes in the training process (here on
    the CPU) and draws the same augmentation: the very batches of the worker-decode path."""
    out = tmp_path / "prepared"
    _prepare(source, out)
    common = ["--data", str(out), *TINY, "-b", "4", "-j", "1", "--output-dir", str(tmp_path)]
    plain, val = _batches(options.resolve(common))
    decoded, val_again = _batches(options.resolve([*common, "--gpu-decode"]))
    assert len(plain) == len(decoded) == 12
    for (x, y), (x2, y2) in zip(plain, decoded):
        assert x.shape[1:] == (3, 67, 67) and x.dtype == torch.float32
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # validation: centre crops in the workers, mean image subtracted, every image once
    assert sum(len(t) for _, t in val) == 6
    assert all(torch.equal(a[0], b[0]) for a, b in zip(val, val_again))
