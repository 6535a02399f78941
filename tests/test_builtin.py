"""fastalex.training.data.builtin: the built-in dataset's tree, generated, cached and atomic."""

import json
from pathlib import Path

import pytest
from PIL import Image

from fastalex.training.data import builtin
from fastalex.training.data.builtin import CLASSES, default_cache_dir, ensure_builtin_dataset
from fastalex.training.data.datasets import build_datasets
from image_helpers import one_thread  # noqa: F401 (fixture)

TINY = dict(image_size=32, train_per_class=2, val_per_class=1, progress=False)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}



def test_builtin_layout(tmp_path):
    root = ensure_builtin_dataset(tmp_path / "shapes", **TINY)
    assert root == (tmp_path / "shapes").absolute()
    assert len(CLASSES) >= 10 and len(set(CLASSES)) == len(CLASSES)
    for split, count in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            files = sorted((root / split / name).iterdir())
            assert len(files) == count
            for f in files:
                with Image.open(f) as im:
                    assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (32, 32))
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["version"] == builtin.VERSION and manifest["classes"] == list(CLASSES)
    # The tree loads through the same code as a real --data tree, classes in CLASSES order.
    train_set, val_set = build_datasets(root, None, None)
    assert train_set.classes == list(CLASSES) and len(train_set) == 20 and len(val_set) == 10


def test_builtin_deterministic(tmp_path):
    a = _files(ensure_builtin_dataset(tmp_path / "a", **TINY))
    b = _files(ensure_builtin_dataset(tmp_path / "b", **TINY))
    c = _files(ensure_builtin_dataset(tmp_path / "c", **{**TINY, "seed": 1}))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_builtin_parallel_generation_is_identical(tmp_path):
    params = dict(image_size=24, train_per_class=60, val_per_class=40, progress=False)
    serial = ensure_builtin_dataset(tmp_path / "serial", workers=1, **params)
    parallel = ensure_builtin_dataset(tmp_path / "parallel", workers=2, **params)
    assert _files(serial) == _files(parallel)


def test_builtin_reused_and_regenerated(tmp_path, monkeypatch):
    root = ensure_builtin_dataset(tmp_path / "shapes", **TINY)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete tree")

    monkeypatch.setattr(builtin, "_generate", fail)
    assert ensure_builtin_dataset(tmp_path / "shapes", **TINY) == root
    monkeypatch.undo()

    # Other parameters or another generator version: regenerated in place.
    ensure_builtin_dataset(tmp_path / "shapes", **{**TINY, "train_per_class": 3})
    assert len(list((root / "train" / CLASSES[0]).iterdir())) == 3
    monkeypatch.setattr(builtin, "VERSION", builtin.VERSION + 1)
    ensure_builtin_dataset(tmp_path / "shapes", **{**TINY, "train_per_class": 3})
    assert json.loads((root / "manifest.json").read_text())["version"] == builtin.VERSION
    # A deleted file makes the tree incomplete: regenerated.
    victim = next((root / "val" / CLASSES[0]).iterdir())
    victim.unlink()
    ensure_builtin_dataset(tmp_path / "shapes", **{**TINY, "train_per_class": 3})
    assert victim.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_builtin_generation_is_atomic(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    calls = []

    def dies_midway(name, rng, size):
        if len(calls) == 5:
            raise KeyboardInterrupt  # a run killed halfway through the generation
        calls.append(name)
        return Image.new("RGB", (size, size))

    monkeypatch.setattr(builtin, "render_image", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_builtin_dataset(root, **TINY)
    assert not root.exists()
    monkeypatch.undo()

    # A leftover temporary tree from a killed process (even one that looks finished) is
    # removed and never renamed into place.
    leftover = tmp_path / ".shapes.tmp-killed"
    (leftover / "train" / "junk").mkdir(parents=True)
    (leftover / "manifest.json").write_text("{}")
    ensure_builtin_dataset(root, **TINY)
    assert not leftover.exists()
    assert _files(root) == _files(ensure_builtin_dataset(tmp_path / "fresh", **TINY))


def test_builtin_refuses_foreign_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a fastalex built-in dataset"):
        ensure_builtin_dataset(foreign, **TINY)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="image_size"):
        ensure_builtin_dataset(tmp_path / "x", image_size=4)
    with pytest.raises(ValueError, match="train_per_class"):
        ensure_builtin_dataset(tmp_path / "x", train_per_class=0)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTALEX_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FASTALEX_CACHE")
    assert default_cache_dir() == tmp_path / "b" / "fastalex"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "fastalex"
    monkeypatch.setenv("FASTALEX_CACHE", str(tmp_path / "c"))
    root = ensure_builtin_dataset(**TINY)
    assert root.parent == tmp_path / "c" and root.name.startswith(f"shapes-v{builtin.VERSION}-")
