"""fastalex.training.data: the built-in dataset, training-set statistics, the paper's transforms, loading.

No kernels here (no ``device`` fixture): everything is checked on the CPU against NumPy or
explicit slicing, on tiny images so the file runs in seconds.
"""

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastalex.training.data import builtin
from fastalex.training.data.builtin import CLASSES, default_cache_dir, ensure_builtin_dataset, render_image
from fastalex.training.data.datasets import (
    CorruptImageWarning,
    DataError,
    EncodedImageFolder,
    SafeImageFolder,
    build_datasets,
    collate_encoded,
    collate_skip_none,
    decode_images,
)
from fastalex.training.data.stats import ImageStats, load_or_compute_stats
from fastalex.training.data.transforms import (
    BatchTrainTransform,
    PCALighting,
    SubtractMean,
    ToFloat255,
    eval_transform,
    train_transform,
)

TINY = dict(image_size=32, train_per_class=2, val_per_class=1, progress=False)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: intra-op threads only add overhead, a lot of it on a busy shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def _random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_tree(root: Path, images: dict[str, np.ndarray]) -> None:
    """images: relative path -> HxWx3 uint8 (PNG: lossless, so references see the same pixels)."""
    for rel, pixels in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)


def _stats(mean_image: torch.Tensor, eigvals=(9.0, 4.0, 1.0), eigvecs=None) -> ImageStats:
    eigvecs = (
        torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0].float()
        if eigvecs is None
        else eigvecs
    )
    return ImageStats(
        mean_image=mean_image,
        mean_rgb=mean_image.mean(dim=(1, 2)),
        eigvals=torch.tensor(eigvals, dtype=torch.float32),
        eigvecs=eigvecs,
        num_images=1,
        size=mean_image.shape[-1],
    )


# ---------------------------------------------------------------------------------------------
# Built-in dataset
# ---------------------------------------------------------------------------------------------


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


def test_builtin_classes_differ_in_shape_not_colour():
    # The same pose for every class (the pose is drawn first): the masks must differ clearly.
    masks = {
        name: np.asarray(builtin._shape_mask(name, np.random.default_rng(7), 64), np.float32) / 255
        for name in CLASSES
    }
    for i, a in enumerate(CLASSES):
        for b in CLASSES[i + 1 :]:
            overlap = np.minimum(masks[a], masks[b]).sum() / np.maximum(masks[a], masks[b]).sum()
            assert overlap < 0.8, (a, b, overlap)
    # Colour carries no class information: the mean colours of the classes differ far less
    # than the colours of the images within a class (a Fisher ratio near 1/n, not >> 1).
    n = 24
    colours = np.array(
        [
            [
                np.asarray(render_image(name, np.random.default_rng([c, i]), 24)).mean((0, 1))
                for i in range(n)
            ]
            for c, name in enumerate(CLASSES)
        ]
    )  # [classes, n, 3]
    between = colours.mean(1).var(0)
    within = colours.var(1).mean(0)
    assert np.all(between / within < 0.25), between / within


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def _square_tree(tmp_path, size=8, n=6):
    rng = np.random.default_rng(0)
    images = {f"train/c{i % 2}/img{i}.png": _random_image(rng, size, size) for i in range(n)}
    # Correlated channels, so the covariance has distinct eigenvalues and meaningful vectors.
    for v in images.values():
        v[..., 1] = v[..., 0] // 2 + v[..., 1] // 2
        v[..., 2] = v[..., 0] // 3
    _write_tree(tmp_path, images)
    return tmp_path / "train", np.stack(list(images.values())).astype(np.float64)


def _check_against_reference(stats: ImageStats, pixels: np.ndarray) -> None:
    """pixels: [N, S, S, 3] float64, the images exactly as the statistics see them."""
    np.testing.assert_allclose(
        stats.mean_image.numpy(), pixels.mean(0).transpose(2, 0, 1), rtol=1e-6
    )
    np.testing.assert_allclose(stats.mean_rgb.numpy(), pixels.mean((0, 1, 2)), rtol=1e-6)
    covariance = np.cov(pixels.reshape(-1, 3), rowvar=False, bias=True)
    eigvals, eigvecs = np.linalg.eigh(covariance)
    eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
    np.testing.assert_allclose(stats.eigvals.numpy(), eigvals, rtol=1e-5)
    # Eigenvectors are defined up to sign.
    dots = np.abs(np.sum(stats.eigvecs.numpy().astype(np.float64) * eigvecs, axis=0))
    np.testing.assert_allclose(dots, 1.0, rtol=1e-5)
    # And they reconstruct the covariance.
    v, lam = stats.eigvecs.double().numpy(), stats.eigvals.double().numpy()
    np.testing.assert_allclose(v @ np.diag(lam) @ v.T, covariance, rtol=1e-5, atol=1e-3)


def test_stats_against_numpy(tmp_path):
    train, pixels = _square_tree(tmp_path)
    stats = load_or_compute_stats(train, tmp_path / "stats.pt", size=8, progress=False)
    assert (stats.num_images, stats.size) == (6, 8)
    assert stats.mean_image.dtype == torch.float32 and stats.mean_image.shape == (3, 8, 8)
    _check_against_reference(stats, pixels)


def test_stats_resize_and_centre_crop(tmp_path):
    rng = np.random.default_rng(1)
    images = {
        "train/a/wide.png": _random_image(rng, 12, 20),
        "train/b/tall.png": _random_image(rng, 20, 12),
    }
    _write_tree(tmp_path, images)
    stats = load_or_compute_stats(tmp_path / "train", tmp_path / "s.pt", size=6, progress=False)
    # Reference: PIL's bilinear resize of the shorter side to 6 (torchvision's v2.Resize on a
    # PIL image), then the centre 6x6.
    wide = np.asarray(Image.fromarray(images["train/a/wide.png"]).resize((10, 6), Image.BILINEAR))
    tall = np.asarray(Image.fromarray(images["train/b/tall.png"]).resize((6, 10), Image.BILINEAR))
    pixels = np.stack([wide[:, 2:8], tall[2:8, :]]).astype(np.float64)
    _check_against_reference(stats, pixels)


def test_stats_cache(tmp_path, monkeypatch):
    from fastalex.training.data import stats as stats_module

    train, _ = _square_tree(tmp_path)
    cache = tmp_path / "cache" / "stats.pt"
    first = load_or_compute_stats(train, cache, size=8, progress=False)
    assert cache.exists() and [p.name for p in cache.parent.iterdir()] == ["stats.pt"]

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(stats_module, "compute_stats", fail)
    again = load_or_compute_stats(train, cache, size=8, progress=False)
    assert torch.equal(again.mean_image, first.mean_image) and torch.equal(
        again.eigvecs, first.eigvecs
    )
    # max_images above the number of images: same sample, still cached.
    load_or_compute_stats(train, cache, size=8, max_images=100, progress=False)
    monkeypatch.undo()

    # Another size, another sample, or an unreadable cache: recomputed.
    assert load_or_compute_stats(train, cache, size=4, progress=False).size == 4
    sampled = load_or_compute_stats(train, cache, size=4, max_images=3, progress=False)
    assert sampled.num_images == 3
    assert load_or_compute_stats(train, cache, size=4, max_images=3, progress=False).num_images == 3
    # A file replaced under the same name (new contents, new modification time): recomputed.
    before = load_or_compute_stats(train, cache, size=8, progress=False)
    victim = next(train.rglob("*.png"))
    Image.fromarray(_random_image(np.random.default_rng(99), 8, 8)).save(victim)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    after = load_or_compute_stats(train, cache, size=8, progress=False)
    assert not torch.equal(before.mean_image, after.mean_image)
    cache.write_bytes(b"not a torch file")
    assert load_or_compute_stats(train, cache, size=8, progress=False).num_images == 6


def test_stats_workers_and_corrupt_files(tmp_path):
    train, pixels = _square_tree(tmp_path)
    (train / "c0" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.warns(CorruptImageWarning, match="broken.jpg"):
        serial = load_or_compute_stats(train, tmp_path / "a.pt", size=8, progress=False, workers=0)
    _check_against_reference(serial, pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the workers warn in their own processes
        parallel = load_or_compute_stats(
            train, tmp_path / "b.pt", size=8, progress=False, workers=2
        )
    assert torch.equal(serial.mean_image, parallel.mean_image)
    assert torch.equal(serial.eigvals, parallel.eigvals)


def test_stats_errors(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        load_or_compute_stats(tmp_path / "missing", tmp_path / "s.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_or_compute_stats(tmp_path / "empty", tmp_path / "s.pt")
    with pytest.raises(ValueError, match="max_images"):
        load_or_compute_stats(tmp_path / "empty", tmp_path / "s.pt", max_images=0)


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------


def test_to_float255_and_subtract_mean():
    pixels = _random_image(np.random.default_rng(2), 5, 7)
    x = ToFloat255()(Image.fromarray(pixels))
    assert x.dtype == torch.float32 and x.shape == (3, 5, 7)
    assert torch.equal(x, torch.from_numpy(pixels).permute(2, 0, 1).float())  # 0-255, not [0, 1]

    mean_image = torch.rand(3, 5, 7) * 255
    assert torch.equal(SubtractMean(mean_image)(x), x - mean_image)
    rgb = torch.tensor([10.0, 20.0, 30.0])
    assert torch.equal(SubtractMean(rgb)(x), x - rgb.view(3, 1, 1))
    with pytest.raises(ValueError, match="mean"):
        SubtractMean(torch.zeros(2, 5, 7))
    with pytest.raises(ValueError, match="image"):
        SubtractMean(mean_image)(torch.zeros(3, 4, 4))


def _pca_reference(image: np.ndarray, alpha: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray):
    shift = eigvecs.astype(np.float64) @ (alpha.astype(np.float64) * eigvals)  # sum_i a_i l_i p_i
    return image.astype(np.float64) + shift[..., :, None, None]


def test_pca_lighting_against_numpy():
    eigvals = np.array([500.0, 30.0, 4.0])
    eigvecs = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
    lighting = PCALighting(torch.tensor(eigvals), torch.tensor(eigvecs), std=0.1)
    image = torch.randn(3, 6, 5) * 50

    torch.manual_seed(123)
    alpha = (torch.randn(3) * 0.1).numpy()
    torch.manual_seed(123)
    out = lighting(image)
    expected = _pca_reference(image.numpy(), alpha, eigvals, eigvecs)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)
    # A new draw on every call.
    assert not torch.equal(lighting(image), lighting(image))

    # A batch gets one draw per image.
    batch = torch.randn(4, 3, 6, 5)
    torch.manual_seed(5)
    alphas = (torch.randn(4, 3) * 0.1).numpy()
    torch.manual_seed(5)
    out = lighting(batch)
    for n in range(4):
        expected = _pca_reference(batch[n].numpy(), alphas[n], eigvals, eigvecs)
        np.testing.assert_allclose(out[n].numpy(), expected, rtol=1e-5, atol=1e-4)

    assert torch.equal(
        PCALighting(torch.tensor(eigvals), torch.tensor(eigvecs), std=0.0)(image), image
    )
    with pytest.raises(ValueError, match="eigvecs"):
        PCALighting(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="std"):
        PCALighting(torch.ones(3), torch.eye(3), std=-1)


def _centre(n: int, crop: int) -> int:
    return int(round((n - crop) / 2.0))  # torchvision's centre-crop offset


def test_ten_crop_geometry():
    size, crop = 10, 6
    pixels = _random_image(np.random.default_rng(4), size, size)
    mean_image = torch.rand(3, size, size) * 255
    stats = _stats(mean_image)
    x = torch.from_numpy(pixels).permute(2, 0, 1).double() - mean_image.double()  # reference

    out = eval_transform(stats, size=size, crop=crop, ten_crop=True)(Image.fromarray(pixels))
    assert out.shape == (10, 3, crop, crop) and out.dtype == torch.float32
    c = _centre(size, crop)
    tl, tr = x[:, :crop, :crop], x[:, :crop, -crop:]
    bl, br = x[:, -crop:, :crop], x[:, -crop:, -crop:]
    centre = x[:, c : c + crop, c : c + crop]
    flip = lambda t: t.flip(-1)  # noqa: E731
    # TenCrop order: the five of the image, then the same five positions of the flipped image.
    expected = [tl, tr, bl, br, centre, flip(tr), flip(tl), flip(br), flip(bl), flip(centre)]
    for i, e in enumerate(expected):
        torch.testing.assert_close(out[i].double(), e, rtol=0, atol=1e-4, msg=f"crop {i}")

    single = eval_transform(stats, size=size, crop=crop)(Image.fromarray(pixels))
    torch.testing.assert_close(single.double(), centre, rtol=0, atol=1e-4)


def test_eval_resizes_shorter_side_and_per_channel_mean():
    size, crop = 8, 6
    pixels = _random_image(np.random.default_rng(5), 12, 20)  # H=12, W=20 -> 8 x 13
    stats = _stats(torch.rand(3, size, size) * 255)
    out = eval_transform(stats, size=size, crop=crop, per_channel_mean=True)(
        Image.fromarray(pixels)
    )
    resized = np.asarray(Image.fromarray(pixels).resize((13, 8), Image.BILINEAR)).astype(np.float64)
    x0 = _centre(13, size)
    square = torch.from_numpy(resized[:, x0 : x0 + size]).permute(2, 0, 1)
    c = _centre(size, crop)
    expected = square[:, c : c + crop, c : c + crop] - stats.mean_rgb.double().view(3, 1, 1)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4)

    with pytest.raises(ValueError, match="size"):
        eval_transform(stats, size=10, crop=6)  # the mean image is 8x8
    with pytest.raises(ValueError, match="crop"):
        train_transform(stats, size=8, crop=9)


def _which_crop(out: torch.Tensor, x: torch.Tensor, crop: int, atol: float) -> tuple:
    """The one (top, left, flipped) for which ``out`` is that crop of ``x``; fails unless
    exactly one matches."""
    h, w = x.shape[-2:]
    matches = [
        (i, j, f)
        for i in range(h - crop + 1)
        for j in range(w - crop + 1)
        for f in (False, True)
        if torch.allclose(
            out,
            x[:, i : i + crop, j : j + crop].flip(-1) if f else x[:, i : i + crop, j : j + crop],
            rtol=0,
            atol=atol,
        )
    ]
    assert len(matches) == 1, f"not exactly one crop (flipped or not) of the input: {matches}"
    return matches[0]


def test_train_transform_crop_flip_and_lighting():
    size, crop = 9, 5
    pixels = _random_image(np.random.default_rng(6), size, size)
    stats = _stats(torch.rand(3, size, size) * 255, eigvals=(400.0, 100.0, 25.0))
    x = torch.from_numpy(pixels).permute(2, 0, 1).double() - stats.mean_image.double()
    plain = train_transform(stats, size=size, crop=crop, pca_std=0.0)
    lit = train_transform(stats, size=size, crop=crop, pca_std=0.1)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = plain(Image.fromarray(pixels)).double()
        assert out.shape == (3, crop, crop)
        seen.add(_which_crop(out, x, crop, atol=1e-4))
        # Lighting draws after the crop and flip: with the same seed, the same crop plus one
        # RGB shift per image, built from the square roots of the eigenvalues.
        torch.manual_seed(seed)
        shift = lit(Image.fromarray(pixels)).double() - out
        per_channel = shift.mean(dim=(1, 2))
        torch.testing.assert_close(
            shift, per_channel.view(3, 1, 1).expand_as(shift), rtol=0, atol=1e-3
        )
        coords = stats.eigvecs.double().T @ per_channel / stats.eigvals.double().sqrt()  # alpha
        assert coords.abs().max() < 0.6  # |alpha| < 6 sigma
    assert len(seen) > 6  # the crops and flips vary
    lighting = lit.transforms[-1]
    assert isinstance(lighting, PCALighting)
    torch.testing.assert_close(lighting.eigvals, stats.eigvals.sqrt())


def test_transforms_pickle():
    # DataLoader workers started with spawn/forkserver receive the transforms by pickling.
    stats = _stats(torch.rand(3, 8, 8))
    for t in (
        train_transform(stats, size=8, crop=6),
        eval_transform(stats, size=8, crop=6, ten_crop=True),
    ):
        pickle.loads(pickle.dumps(t))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_corrupt_images_skipped_with_warning(tmp_path):
    rng = np.random.default_rng(7)
    _write_tree(
        tmp_path, {"a/good.png": _random_image(rng, 6, 6), "b/good.jpg": _random_image(rng, 6, 6)}
    )
    good_jpeg = (tmp_path / "b" / "good.jpg").read_bytes()
    (tmp_path / "a" / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (tmp_path / "b" / "garbage.jpg").write_bytes(b"this is not an image")
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    dataset = SafeImageFolder(tmp_path, transform=ToFloat255())
    names = [Path(p).name for p, _ in dataset.samples]
    for bad in ("truncated.jpg", "garbage.jpg", "empty.png"):
        i = names.index(bad)
        with pytest.warns(CorruptImageWarning, match=bad):
            assert dataset[i] is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per file: no second warning
            assert dataset[i] is None
    x, target = dataset[names.index("good.png")]
    assert x.shape == (3, 6, 6) and target == 0

    loader = DataLoader(dataset, batch_size=5, collate_fn=collate_skip_none)
    ((images, targets),) = list(loader)
    assert images.shape == (2, 3, 6, 6) and targets.tolist() == [0, 1]
    assert collate_skip_none([None, None]) is None


def test_build_datasets_errors(tmp_path):
    rng = np.random.default_rng(8)
    with pytest.raises(DataError, match="no such directory"):
        build_datasets(tmp_path / "missing", None, None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        build_datasets(tmp_path / "file", None, None)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="no train/"):
        build_datasets(root, None, None)
    (root / "train").mkdir()
    with pytest.raises(DataError, match="no images in train/"):
        build_datasets(root, None, None)
    (root / "train" / "cat").mkdir()
    with pytest.raises(DataError, match="no images in train/"):  # a class folder, no image in it
        build_datasets(root, None, None)
    _write_tree(
        root,
        {"train/cat/1.png": _random_image(rng, 4, 4), "train/dog/1.png": _random_image(rng, 4, 4)},
    )
    with pytest.raises(DataError, match="no val/"):
        build_datasets(root, None, None)
    _write_tree(root, {"val/ILSVRC2012_val_00000001.JPEG": _random_image(rng, 4, 4)})
    with pytest.raises(DataError, match="sort them into <class>/ folders"):
        build_datasets(root, None, None)
    _write_tree(
        root, {"val/cat/1.png": _random_image(rng, 4, 4), "val/emu/1.png": _random_image(rng, 4, 4)}
    )
    with pytest.raises(
        DataError, match=r"different classes.*only in train: \['dog'\].*only in val: \['emu'\]"
    ):
        build_datasets(root, None, None)
    _write_tree(root, {"val/dog/1.png": _random_image(rng, 4, 4)})
    (root / "val" / "emu" / "1.png").unlink()
    (root / "val" / "emu").rmdir()
    train_set, val_set = build_datasets(root, ToFloat255(), ToFloat255())
    assert train_set.classes == val_set.classes == ["cat", "dog"]
    assert val_set[0][0].shape == (3, 4, 4)


# ---------------------------------------------------------------------------------------------
# GPU decoding path (runs on the CPU here; on CUDA too when present)
# ---------------------------------------------------------------------------------------------

DECODE_DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]


@pytest.mark.parametrize("device", DECODE_DEVICES)
def test_encoded_folder_and_decode(tmp_path, device):
    rng = np.random.default_rng(9)
    pixels = {
        "a/x.jpg": _random_image(rng, 10, 14),
        "a/y.png": _random_image(rng, 9, 9),
        "b/z.jpg": _random_image(rng, 12, 8),
    }
    _write_tree(tmp_path, pixels)
    (tmp_path / "b" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    dataset = EncodedImageFolder(tmp_path)
    datas, targets, paths = collate_encoded([dataset[i] for i in range(len(dataset))])
    assert targets.tolist() == [0, 0, 1, 1]
    assert [Path(p).name for p in paths] == ["x.jpg", "y.png", "bad.jpg", "z.jpg"]
    assert all(d.dtype == torch.uint8 and d.dim() == 1 for d in datas)

    with pytest.warns(CorruptImageWarning, match="bad.jpg"):
        images, keep = decode_images(datas, paths, device=device)
    assert keep == [0, 1, 3]
    for image, i in zip(images, keep):
        with Image.open(paths[i]) as im:
            reference = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert image.device.type == device and image.dtype == torch.uint8
        # PNG is lossless; JPEG decoders may round differently (a level or two).
        tolerance = 0 if paths[i].endswith(".png") else 3
        assert (image.cpu().int() - reference.int()).abs().max() <= tolerance
    # A batch of good JPEGs decodes in one call.
    images, keep = decode_images([datas[0], datas[3]], [paths[0], paths[3]], device=device)
    assert keep == [0, 1] and images[1].shape == (3, 12, 8)
    assert decode_images([], [], device=device) == ([], [])
    assert collate_encoded([None]) is None


@pytest.mark.parametrize("device", DECODE_DEVICES)
def test_batch_train_transform(device):
    from torchvision.transforms.v2 import functional as F

    size, crop = 8, 5
    stats = _stats(torch.rand(3, size, size) * 255, eigvals=(400.0, 100.0, 25.0))
    rng = np.random.default_rng(10)
    images = [
        torch.from_numpy(_random_image(rng, h, w)).permute(2, 0, 1).to(device)
        for h, w in ((8, 8), (16, 12), (10, 20))
    ]
    # Reference: torchvision's resize (on the CPU) and centre crop of each image, mean removed.
    squares = [
        F.center_crop(F.resize(image.cpu(), [size], antialias=True), [size]).double()
        - stats.mean_image.double()
        for image in images
    ]
    # A GPU resize may round a value to the other neighbouring level.
    atol = 1e-4 if device == "cpu" else 1.01
    plain = BatchTrainTransform(stats, size=size, crop=crop, pca_std=0.0).to(device)
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out = plain(images)
        assert out.shape == (3, 3, crop, crop) and out.dtype == torch.float32
        assert out.device.type == device
        for n, square in enumerate(squares):
            seen.add(_which_crop(out[n].cpu().double(), square, crop, atol))
    assert len(seen) > 6
    lit = BatchTrainTransform(stats, size=size, crop=crop, pca_std=0.1).to(device)
    torch.manual_seed(0)
    base = plain(images)
    torch.manual_seed(0)
    shift = (lit(images) - base).cpu()  # one RGB shift per image, different per image
    per_image = shift.mean(dim=(2, 3))
    torch.testing.assert_close(
        shift, per_image[:, :, None, None].expand_as(shift), rtol=0, atol=1e-3
    )
    assert not torch.allclose(per_image[0], per_image[1])
    with pytest.raises(ValueError, match="images"):
        plain([])
