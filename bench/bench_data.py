"""The data pipeline's throughput: can it feed a training step of ~2000+ images/s?

Cases (images/s in ``extra_info["images_per_s"]``):
- ``cpu-<data>-w4`` / ``cpu-<data>-w-all``: the CPU path the trainer uses, a DataLoader with 4
  workers or one per usable CPU over ``SafeImageFolder`` + :func:`train_transform` (PIL JPEG
  decode, resize, crop, mean image, flip, PCA lighting), batches of 128, one pass over the
  training split.
- ``cpu-shapes256-1core``: one core's decode + train transform rate (the unit that the worker
  count multiplies).
- ``gpu-<data>-decode`` and ``gpu-<data>-decode+augment``: the GPU path, nvJPEG batched decode
  (:func:`decode_images`) alone and followed by :class:`BatchTrainTransform`, batches of 256,
  over encoded files already in memory (reading them is the DataLoader workers' part).

Data: the built-in shapes at the CLI's 128 px (``shapes128``) and the same generator at 256 px
with the paper's 256/227 sizes (``shapes256``). ImageNet's JPEGs average about 400x350 and
~110 kB, so they decode roughly 2x slower per image than ``shapes256``: read that case as an
upper bound for ImageNet.

Full mode (``--benchmark-only``, on the GPU machine) times whole passes; smoke mode runs each
case once on a handful of tiny images (GPU cases on the CPU) so the code cannot rot.
"""

import os

import pytest
import torch
from torch.utils.data import DataLoader

from fastalex.training.data.builtin import ensure_builtin_dataset
from fastalex.training.data.datasets import (
    EncodedImageFolder,
    SafeImageFolder,
    collate_encoded,
    collate_skip_none,
    decode_images,
)
from fastalex.training.data.stats import load_or_compute_stats
from fastalex.training.data.transforms import BatchTrainTransform, train_transform

CPU_BATCH = 128
GPU_BATCH = 256

# name -> (image_size, size, crop, train_per_class) in full mode
DATASETS = {
    "shapes128": (128, 128, 113, 600),
    "shapes256": (256, 256, 227, 300),
}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@pytest.fixture(scope="session")
def datasets(bench_mode, tmp_path_factory):
    """name -> (train dir, stats, size, crop)."""
    out = {}
    for name, (image_size, size, crop, per_class) in DATASETS.items():
        if bench_mode == "smoke":  # a handful of tiny images
            image_size, size, crop, per_class = 32, 32, 28, 2
        root = ensure_builtin_dataset(
            tmp_path_factory.mktemp(name),
            image_size=image_size,
            train_per_class=per_class,
            val_per_class=1,
            progress=False,
        )
        stats = load_or_compute_stats(
            root / "train", root / "stats.pt", size=size, max_images=2000, progress=False
        )
        out[name] = (root / "train", stats, size, crop)
    return out


def _record(benchmark, num_images: int, **info) -> None:
    seconds = benchmark.stats.stats.median
    benchmark.extra_info.update(
        images=num_images, seconds=seconds, images_per_s=num_images / seconds, **info
    )


def _time(benchmark, fn, mode: str) -> None:
    if mode == "smoke":
        benchmark.pedantic(fn, rounds=1, iterations=1)
    else:
        benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("workers", ["4", "all"])
@pytest.mark.parametrize("data", list(DATASETS))
def test_cpu_pipeline(benchmark, bench_mode, datasets, data, workers):
    benchmark.name = f"cpu-{data}-{'w4' if workers == '4' else 'w-all'}"
    train_dir, stats, size, crop = datasets[data]
    num_workers = 0 if bench_mode == "smoke" else (min(4, _cpus()) if workers == "4" else _cpus())
    dataset = SafeImageFolder(train_dir, transform=train_transform(stats, size=size, crop=crop))
    loader = DataLoader(
        dataset,
        batch_size=CPU_BATCH,
        shuffle=True,
        num_workers=num_workers,
        collate_fn=collate_skip_none,
        persistent_workers=num_workers > 0,  # time the pipeline, not the workers' start
        prefetch_factor=4 if num_workers > 0 else None,
    )

    def one_pass():
        for images, _ in loader:
            assert images.shape[1:] == (3, crop, crop)

    _time(benchmark, one_pass, bench_mode)
    _record(benchmark, len(dataset), workers=num_workers, size=size, crop=crop, cpus=_cpus())


@pytest.mark.parametrize("augment", [False, True], ids=["decode", "decode+augment"])
@pytest.mark.parametrize("data", list(DATASETS))
def test_gpu_decode(benchmark, bench_mode, bench_device, datasets, data, augment):
    benchmark.name = f"gpu-{data}-{'decode+augment' if augment else 'decode'}"
    train_dir, stats, size, crop = datasets[data]
    device = bench_device  # "cpu" in smoke mode: the same code through torchvision's CPU decoder
    dataset = EncodedImageFolder(train_dir)
    items = [dataset[i] for i in range(len(dataset))]
    batches = [collate_encoded(items[i : i + GPU_BATCH]) for i in range(0, len(items), GPU_BATCH)]
    transform = BatchTrainTransform(stats, size=size, crop=crop).to(device)

    def one_pass():
        for datas, _, paths in batches:
            images, _ = decode_images(datas, paths, device=device)
            if augment:
                x = transform(images)
                assert x.shape[1:] == (3, crop, crop)
        if device == "cuda":
            torch.cuda.synchronize()

    _time(benchmark, one_pass, bench_mode)
    info = dict(device=device, size=size, crop=crop, batch=GPU_BATCH)
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    _record(benchmark, len(items), **info)


def test_cpu_decode_single_core(benchmark, bench_mode, datasets):
    """One core's JPEG decode + train transform rate, the unit the worker count multiplies."""
    benchmark.name = "cpu-shapes256-1core"
    train_dir, stats, size, crop = datasets["shapes256"]
    dataset = SafeImageFolder(train_dir, transform=train_transform(stats, size=size, crop=crop))
    n = min(len(dataset), 500)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:

        def decode_some():
            for i in range(n):
                dataset[i]

        _time(benchmark, decode_some, bench_mode)
    finally:
        torch.set_num_threads(threads)
    _record(benchmark, n, size=size, crop=crop)
