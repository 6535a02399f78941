"""Training-set statistics for the paper's preprocessing: the mean image and the RGB PCA.

Both come from the same images the network sees before augmentation: shorter side resized to
``size``, centre ``size x size`` crop, pixel values 0-255. Sums are accumulated in float64 (a
float32 running sum over millions of pixels loses digits). The result is cached with a key
(size, and a digest of the sampled files' paths, sizes and modification times), so a changed
sample, file or size recomputes it.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from fastalex.training.atomic import save_atomic
from fastalex.training.data.datasets import DataError, SafeImageFolder
from fastalex.training.system import usable_cpus

__all__ = ["ImageStats", "compute_stats", "load_or_compute_stats", "load_stats", "save_stats",
           "stats_from_sums"]

_CACHE_VERSION = 1
_SAMPLE_SEED = 0  # the sample of a large training set is the same on every run and rank


@dataclass
class ImageStats:
    """Mean image and RGB PCA of a training set, on the 0-255 scale.

    ``eigvals`` are the eigenvalues of the 3x3 covariance of RGB pixel values (variances, in
    descending order), ``eigvecs[:, i]`` the unit eigenvector of ``eigvals[i]``.
    """

    mean_image: torch.Tensor  # float32 [3, size, size]
    mean_rgb: torch.Tensor  # float32 [3]
    eigvals: torch.Tensor  # float32 [3]
    eigvecs: torch.Tensor  # float32 [3, 3]
    num_images: int
    size: int


def _stats_transform(size: int) -> v2.Compose:
    # The same resize and crop as the train and eval transforms, kept as uint8 (a quarter of the
    # bytes a float tensor takes between the loader's workers and this process).
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])


def _sample(n: int, max_images: int) -> list[int]:
    if n <= max_images:
        return list(range(n))
    generator = torch.Generator().manual_seed(_SAMPLE_SEED)
    return sorted(torch.randperm(n, generator=generator)[:max_images].tolist())


def _default_workers(num_images: int) -> int:
    if num_images < 256:  # worker start-up costs more than it saves
        return 0
    return min(usable_cpus(), 8)


def _open(train_dir: Path, size: int) -> SafeImageFolder:
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: no such directory (the training images for the statistics)")
    try:
        return SafeImageFolder(train_dir, transform=_stats_transform(size))
    except FileNotFoundError as exc:
        raise DataError(f"{train_dir}: no images ({exc})") from None


def _key(dataset: SafeImageFolder, indices: list[int], size: int) -> dict:
    root = Path(dataset.root)
    digest = hashlib.sha256()
    for i in indices:
        # The relative path (moving the tree elsewhere keeps the cache), the size and the
        # modification time (a file replaced under the same name invalidates it).
        path = dataset.samples[i][0]
        st = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return {
        "version": _CACHE_VERSION,
        "size": size,
        "num_sampled": len(indices),
        "sample_sha256": digest.hexdigest(),
    }


@contextmanager
def _single_threaded():
    """torch on one thread for a while. The work here is many small ops (stacking a batch,
    summing it), where intra-op threads only cost, most of all on a CPU that the loader's
    workers keep busy (docs/training.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _PartialSums:
    """Collate function: a batch of uint8 images -> (sum of images, sum of x x^T over pixels,
    number of images), all float64. It runs in the DataLoader's workers, so the accumulation is
    spread over them and only the sums travel back; every partial sum of 0-255 integers is an
    integer below 2^53, exact in float64, so the total does not depend on the batching."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        images = [sample[0] for sample in batch if sample is not None]
        if not images:
            return None
        x = torch.stack(images).to(torch.float64)
        if x.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"images: expected [3, {self.size}, {self.size}], got {x.shape[1:]}")
        pixels = x.transpose(0, 1).reshape(3, -1)
        return x.sum(0), pixels @ pixels.T, x.shape[0]


def compute_stats(
    images: torch.utils.data.Dataset,
    *,
    size: int,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
) -> ImageStats:
    """Statistics of a dataset whose items are ``(uint8 image [3, size, size], target)``, or
    ``None`` for an unreadable image."""
    loader = DataLoader(
        images, batch_size=batch_size, num_workers=workers, collate_fn=_PartialSums(size)
    )
    # NumPy accumulators: single-threaded, whereas torch's intra-op threads in this (mostly
    # idle) process can stall for long on a CPU that the loader's workers keep busy.
    pixel_sum = np.zeros((3, size, size), dtype=np.float64)
    outer_sum = np.zeros((3, 3), dtype=np.float64)  # sum over pixels of x x^T
    count = 0
    bar = tqdm(loader, desc="mean image and RGB PCA", unit="batch", disable=not progress)
    with _single_threaded():
        for sums in bar:
            if sums is not None:
                pixel_sum += sums[0].numpy()
                outer_sum += sums[1].numpy()
                count += sums[2]
    return stats_from_sums(pixel_sum, outer_sum, count, size)


def stats_from_sums(pixel_sum: np.ndarray, outer_sum: np.ndarray, count: int,
                    size: int) -> ImageStats:
    """The statistics of ``count`` images [3, size, size] from their float64 sums: the sum of
    the images and the sum over all pixels of x x^T (x the pixel's RGB values, 0-255)."""
    if count == 0:
        raise DataError("no readable image to compute the mean image and RGB PCA from")

    mean_image = pixel_sum / count
    mean_rgb = mean_image.mean(axis=(1, 2))
    num_pixels = count * size * size
    # Covariance = E[x x^T] - mu mu^T; in float64 the subtraction keeps ~12 significant digits
    # for 0-255 data, far more than the float32 result needs.
    covariance = outer_sum / num_pixels - np.outer(mean_rgb, mean_rgb)
    eigvals, eigvecs = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(eigvals)[::-1]
    eigvals = np.clip(eigvals[order], 0.0, None)  # tiny negative values are rounding
    eigvecs = eigvecs[:, order]
    return ImageStats(
        mean_image=torch.from_numpy(mean_image).float(),
        mean_rgb=torch.from_numpy(mean_rgb).float(),
        eigvals=torch.from_numpy(eigvals.copy()).float(),
        eigvecs=torch.from_numpy(eigvecs.copy()).float(),
        num_images=count,
        size=size,
    )


def save_stats(stats: ImageStats, path: str | os.PathLike, key: dict) -> None:
    """Write ``stats`` to ``path`` (atomically) in the cache format, under ``key``."""
    save_atomic({"key": key, "stats": vars(stats)}, path)


def load_stats(path: str | os.PathLike, key: dict) -> ImageStats | None:
    """The statistics cached in ``path`` under ``key``; None if missing or made for another."""
    return _load_cached(Path(path), key)


def _load_cached(path: Path, key: dict) -> ImageStats | None:
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated, or not a torch file: whatever it is, recompute
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None
    return ImageStats(**cached["stats"])


def load_or_compute_stats(
    train_dir: str | os.PathLike,
    cache_file: str | os.PathLike,
    *,
    size: int = 256,
    max_images: int = 10000,
    progress: bool = True,
    workers: int | None = None,
) -> ImageStats:
    """The mean image and RGB PCA of the images in ``train_dir`` (an ImageFolder split).

    Computed on a fixed random sample of at most ``max_images`` images (a DataLoader with
    ``workers`` processes decodes them; default: the usable CPUs, at most 8) and cached in
    ``cache_file``; a cache made for another size or another sample is recomputed.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images must be a positive int, got {max_images!r}")
    train_dir, cache_file = Path(train_dir).expanduser(), Path(cache_file).expanduser()
    dataset = _open(train_dir, size)
    indices = _sample(len(dataset), max_images)
    key = _key(dataset, indices, size)
    cached = _load_cached(cache_file, key)
    if cached is not None:
        return cached
    stats = compute_stats(
        Subset(dataset, indices),
        size=size,
        workers=_default_workers(len(indices)) if workers is None else workers,
        progress=progress,
    )
    save_stats(stats, cache_file, key)
    return stats
