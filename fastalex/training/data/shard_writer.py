"""Writing one shard of prepared data (:mod:`fastalex.training.data.shards` describes the format).

A source image is loaded with PIL, its shorter side resized to ``size`` and the centre
``size x size`` cropped, with the same torchvision steps as the ImageFolder path's transforms, so
both paths see the same pixels up to the JPEG re-encoding. The shard's pixel sums (sum of
images, sum of x x^T over pixels, in float64: exact for 0-255 integers) are kept beside it, so
the statistics need no second pass and survive a resumed run.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import v2

from fastalex.training.atomic import write_atomic
from fastalex.training.data.datasets import _DECODE_ERRORS
from fastalex.training.data.shards import shard_paths

__all__ = ["load_square", "shard_done", "write_shard"]


def load_square(path: str, size: int) -> np.ndarray:
    """The image at ``path`` as uint8 [size, size, 3]: shorter side to ``size``, centre crop."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    square = v2.CenterCrop(size)(v2.Resize(size, antialias=True)(image))
    return np.array(square, dtype=np.uint8)


def shard_done(split_dir: Path, index: int, with_sums: bool) -> dict | None:
    """The index of shard ``index`` if the shard is complete (index present, data file of the
    size it records, sums present where needed), else None."""
    paths = shard_paths(split_dir, index)
    try:
        meta = json.loads(paths["index"].read_text())
        if os.path.getsize(paths["data"]) != meta["offsets"][-1]:
            return None
        if with_sums and not paths["sums"].is_file():
            return None
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return meta


def write_shard(split_dir: Path, index: int, samples: list[tuple[str, str, int]], *, size: int,
                quality: int, with_sums: bool) -> dict:
    """Prepare ``samples`` ((path, name relative to the split, label) each) into shard ``index``.

    Files PIL cannot read are left out and listed in the index's ``skipped`` (name: reason).
    Writes the data, then the sums, then the index, each atomically. Returns the index.
    """
    paths = shard_paths(split_dir, index)
    chunks, offsets, labels, names, skipped = [], [0], [], [], []
    pixel_sum = np.zeros((size, size, 3), dtype=np.float64)
    outer_sum = np.zeros((3, 3), dtype=np.float64)
    for path, name, label in samples:
        try:
            square = load_square(path, size)
        except _DECODE_ERRORS as exc:
            skipped.append([str(path), f"{type(exc).__name__}: {exc}"])
            continue
        buffer = io.BytesIO()
        Image.fromarray(square).save(buffer, format="JPEG", quality=quality)
        chunks.append(buffer.getvalue())
        offsets.append(offsets[-1] + len(chunks[-1]))
        labels.append(label)
        names.append(name)
        if with_sums:
            pixels = square.reshape(-1, 3).astype(np.float64)
            pixel_sum += square
            outer_sum += pixels.T @ pixels
    write_atomic(paths["data"], lambda f: f.writelines(chunks))
    if with_sums:
        write_atomic(paths["sums"], lambda f: np.savez(
            f, pixel_sum=pixel_sum.transpose(2, 0, 1), outer_sum=outer_sum, count=len(labels)))
    meta = {"offsets": offsets, "labels": labels, "names": names, "skipped": skipped}
    write_atomic(paths["index"], lambda f: f.write(json.dumps(meta).encode()))
    return meta
