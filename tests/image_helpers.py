"""Helpers of the data-pipeline tests (import as ``from image_helpers import ...``): random
images, ImageFolder trees of them, statistics with known values, crop matching."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastalex.training.data.stats import ImageStats


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add overhead, a lot of it on a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_tree(root: Path, images: dict[str, np.ndarray]) -> None:
    """images: relative path -> HxWx3 uint8 (PNG: lossless, so references see the same pixels)."""
    for rel, pixels in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)


def make_stats(mean_image: torch.Tensor, eigvals=(9.0, 4.0, 1.0), eigvecs=None) -> ImageStats:
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


def which_crop(out: torch.Tensor, x: torch.Tensor, crop: int, atol: float) -> tuple:
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

