"""fastalex.training.data.stats: the mean image and RGB PCA against NumPy, the cache."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastalex.training.data.datasets import CorruptImageWarning, DataError
from fastalex.training.data.stats import ImageStats, load_or_compute_stats
from image_helpers import one_thread, random_image, write_tree  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _square_tree(tmp_path, size=8, n=6):
    rng = np.random.default_rng(0)
    images = {f"train/c{i % 2}/img{i}.png": random_image(rng, size, size) for i in range(n)}
    # Correlated channels, so the covariance has distinct eigenvalues and meaningful vectors.
    for v in images.values():
        v[..., 1] = v[..., 0] // 2 + v[..., 1] // 2
        v[..., 2] = v[..., 0] // 3
    write_tree(tmp_path, images)
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
        "train/a/wide.png": random_image(rng, 12, 20),
        "train/b/tall.png": random_image(rng, 20, 12),
    }
    write_tree(tmp_path, images)
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
    Image.fromarray(random_image(np.random.default_rng(99), 8, 8)).save(victim)
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
