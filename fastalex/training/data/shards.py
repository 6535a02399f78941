"""Prepared data: 256x256 JPEGs in large shard files with an index, and how they are read.

``python -m fastalex.prepare`` writes (see docs/data.md)::

    OUT/fastalex-prepared.json        the manifest, written last: the data is complete
    OUT/fastalex-stats-256px.pt       mean image + RGB PCA, in the format stats.py caches
    OUT/train/shard-00000.jpgs        the JPEG files of the shard, one after another
    OUT/train/shard-00000.json        its index: byte offsets, labels, source names, skipped
    OUT/train/shard-00000.sums.npz    the shard's pixel sums (for the statistics; train only)
    OUT/val/...

A shard's files are each written under a temporary name and renamed when complete, the index
last: a shard without its index is unfinished and never read. Reading a sample is one slice of
a memory-mapped shard file, then a JPEG decode of a small image (CPU workers, or nvJPEG on the
GPU for a whole batch).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision.io import ImageReadMode, decode_jpeg

from fastalex.training.data.datasets import DataError, _torchvision_io, _warn_corrupt

__all__ = [
    "FORMAT",
    "MANIFEST",
    "PreparedImages",
    "ShardSampler",
    "is_prepared",
    "read_manifest",
    "shard_paths",
]

FORMAT = "fastalex-prepared-jpeg"
VERSION = 1
MANIFEST = "fastalex-prepared.json"
NO_SAMPLE = -1  # a sampler's padding index: the dataset returns None for it, the batch drops it


def shard_paths(split_dir: Path, index: int) -> dict[str, Path]:
    """The files of shard ``index`` of a split: its data, its index, its pixel sums."""
    stem = split_dir / f"shard-{index:05d}"
    return {"data": stem.with_suffix(".jpgs"), "index": stem.with_suffix(".json"),
            "sums": Path(f"{stem}.sums.npz")}


def is_prepared(data_dir: str | os.PathLike) -> bool:
    """Whether ``data_dir`` is the output of ``python -m fastalex.prepare`` (it has a manifest)."""
    return (Path(data_dir) / MANIFEST).is_file()


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """The manifest of a prepared directory, or a :class:`DataError` saying what is wrong."""
    path = Path(data_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"--data {data_dir}: unreadable {MANIFEST} ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise DataError(f"--data {data_dir}: {MANIFEST} is not fastalex's prepared data version "
                        f"{VERSION} (format {manifest.get('format')!r}, version "
                        f"{manifest.get('version')!r}): prepare the data again")
    return manifest


class PreparedImages(Dataset):
    """One split of a prepared directory.

    Items: ``(uint8 [3, S, S], target)`` decoded on the CPU (``transform`` applied after, if
    given), or with ``encoded=True`` ``(JPEG bytes as a 1-D uint8 tensor, target, name)`` for
    :func:`~fastalex.training.data.datasets.decode_images` to decode a batch on the GPU. An
    image that does not decode gives ``None`` after a warning naming it; so does the
    :data:`NO_SAMPLE` index a sampler pads with.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str, *, transform=None,
                 encoded: bool = False):
        self.root = Path(data_dir)
        manifest = read_manifest(self.root)
        if split not in manifest["splits"]:
            raise DataError(f"--data {data_dir}: the prepared data has no {split}/ split")
        info = manifest["splits"][split]
        self.split, self.transform, self.encoded = split, transform, encoded
        self.classes = list(manifest["classes"])
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.size = manifest["size"]
        self.shard_sizes = list(info["shard_sizes"])
        self.shard_starts = np.concatenate([[0], np.cumsum(self.shard_sizes)]).astype(np.int64)
        if self.shard_starts[-1] == 0:
            raise DataError(f"--data {data_dir}: the prepared {split}/ split holds no image")
        self._index: dict[int, dict] = {}  # per shard, loaded on first use (in each worker)
        self._data: dict[int, np.memmap] = {}
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, position in the shard) of sample ``index``."""
        shard = int(np.searchsorted(self.shard_starts, index, side="right")) - 1
        return shard, index - int(self.shard_starts[shard])

    def _shard(self, shard: int) -> tuple[dict, np.memmap]:
        if shard not in self._index:
            paths = shard_paths(self.root / self.split, shard)
            index = json.loads(paths["index"].read_text())
            self._index[shard] = index
            self._data[shard] = np.memmap(paths["data"], dtype=np.uint8, mode="r")
        return self._index[shard], self._data[shard]

    def raw(self, index: int) -> tuple[torch.Tensor, int, str]:
        """(JPEG bytes, target, source name) of sample ``index``."""
        shard, pos = self.locate(index)
        meta, data = self._shard(shard)
        start, end = meta["offsets"][pos], meta["offsets"][pos + 1]
        encoded = torch.from_numpy(np.array(data[start:end]))  # a copy: the map stays read-only
        return encoded, meta["labels"][pos], f"{self.root}/{self.split}/{meta['names'][pos]}"

    def __getitem__(self, index: int) -> Any:
        if index == NO_SAMPLE:
            return None
        encoded, target, name = self.raw(index)
        if self.encoded:
            return encoded, target, name
        try:
            with _torchvision_io():
                image = decode_jpeg(encoded, mode=ImageReadMode.RGB)
        except RuntimeError as exc:
            _warn_corrupt(name, exc, self._warned)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, target

    def __getstate__(self) -> dict:  # workers open their own maps
        return {**self.__dict__, "_index": {}, "_data": {}}


class ShardSampler(Sampler[int]):
    """The training order of one rank of ``num_replicas``: each rank reads its own shards, and
    each sample is read by exactly one rank once per epoch.

    Per epoch (``set_epoch``, as ``DistributedSampler``), the shard order is shuffled from
    ``(seed, epoch)``, identically on every rank; the samples in that order are cut into
    ``num_replicas`` contiguous pieces whose lengths differ by at most one, so a rank reads whole
    shards but at most two partial ones at its piece's ends. A rank's samples come in a random
    order. Every rank yields ``ceil(len / num_replicas)`` indices, the shorter ones padded with
    :data:`NO_SAMPLE` (dropped from its batch): the ranks take the same number of steps, which
    data-parallel training needs, and no sample is repeated.
    """

    def __init__(self, dataset: PreparedImages, num_replicas: int = 1, rank: int = 0, *,
                 shuffle: bool = True, seed: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.shard_sizes = list(dataset.shard_sizes)
        self.num_replicas, self.rank, self.shuffle, self.seed = num_replicas, rank, shuffle, seed
        self.epoch = 0
        self.total = sum(self.shard_sizes)
        self.per_rank = math.ceil(self.total / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        starts = np.concatenate([[0], np.cumsum(self.shard_sizes)])
        order = (torch.randperm(len(self.shard_sizes), generator=generator).tolist()
                 if self.shuffle else range(len(self.shard_sizes)))
        samples = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in order])
        lo = self.rank * self.total // self.num_replicas
        hi = (self.rank + 1) * self.total // self.num_replicas
        mine = samples[lo:hi]
        if self.shuffle:  # the rank's own generator: ranks draw different permutations
            rank_gen = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.epoch) * 1_009 + self.rank + 1)
            mine = mine[torch.randperm(len(mine), generator=rank_gen).numpy()]
        yield from mine.tolist()
        yield from [NO_SAMPLE] * (self.per_rank - len(mine))

