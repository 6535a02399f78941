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

ImageNet-sized data (``imagenet``: generated 500x375 JPEGs at quality 90 with texture at several
scales, about 110 kB each like ILSVRC-2012's) and its prepared form (``python -m
fastalex.prepare``: 256 px JPEGs in shards), the paper's 256/227 sizes:
- ``imagenet-folder-1core`` / ``-w-all``: the ImageFolder path (PIL decode of the full-size
  file, resize, crop, mean, flip, lighting), in this process on one thread / in a DataLoader
  with one worker per usable CPU.
- ``prepared-cpu-1core`` / ``-w-all``: prepared data, the 256 px JPEGs decoded by
  ``torchvision.io.decode_jpeg`` in the workers, then crop, flip, mean and lighting batched by
  :class:`BatchTrainTransform` on the training device (here the CPU, in this process: its time
  counts).
- ``prepared-gpu-decode+augment``: prepared data, each batch's JPEGs decoded with nvJPEG and
  augmented on the GPU (the files' bytes in memory; reading them is the workers' part).
``extra_info``: images_per_s (total) and images_per_s_per_core (total over the CPU cores used:
1, or the workers plus the main process).

``python bench/bench_data.py --cpu`` runs the CPU cases side by side in one process tree and
prints them as JSON (the figures of bench/RESULTS.md).

Full mode (``--benchmark-only``, on the GPU machine) times whole passes; smoke mode runs each
case once on a handful of tiny images (GPU cases on the CPU) so the code cannot rot.
"""

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastalex.training.data.builtin import ensure_builtin_dataset
from fastalex.training.data.datasets import (
    EncodedImageFolder,
    SafeImageFolder,
    collate_encoded,
    collate_skip_none,
    decode_images,
)
from fastalex.training.data.shards import PreparedImages
from fastalex.training.data.stats import load_or_compute_stats, load_stats
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


# ImageNet-sized data: the source JPEGs and their prepared form.
IMAGENET_SIZE, IMAGENET_CROP = 256, 227
IMAGENET_W, IMAGENET_H, IMAGENET_QUALITY = 500, 375, 90


def imagenet_like_jpeg(rng: np.random.Generator, w: int = IMAGENET_W, h: int = IMAGENET_H,
                       quality: int = IMAGENET_QUALITY) -> bytes:
    """A photo-sized JPEG that costs what a photo costs to decode: texture at several scales
    (smooth regions to fine grain) gives ~110 kB at quality 90, as ILSVRC-2012's files average;
    flat or pure-noise images would be far smaller or larger."""
    image = np.full((h, w, 3), 128.0, dtype=np.float32)
    for scale, amplitude in ((32, 90), (8, 45), (2, 25), (1, 14)):
        small = rng.normal(0, 1, size=(h // scale + 1, w // scale + 1, 3))
        small = ((small * 40) + 128).clip(0, 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
        image += (up - 128) * amplitude / 40
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_imagenet_like(root: Path, num_images: int, *, classes: int = 4, w: int = IMAGENET_W,
                       h: int = IMAGENET_H, workers: int = 0) -> dict:
    """An ImageFolder tree (train/ with ``num_images``, val/ with one per class) of
    :func:`imagenet_like_jpeg` files, prepared into ``root/prepared`` (``workers`` processes).
    Returns the paths, the mean file size and the prepare step's images/s."""
    from fastalex.training import prepare

    rng = np.random.default_rng(0)
    sizes = []
    for split, n in (("train", num_images), ("val", classes)):
        for i in range(n):
            path = root / "src" / split / f"c{i % classes}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = imagenet_like_jpeg(rng, w, h)
            path.write_bytes(data)
            sizes.append(len(data))
    size = IMAGENET_SIZE if w >= IMAGENET_SIZE else min(w, h)
    start = time.perf_counter()
    manifest = prepare.prepare(root / "src", root / "prepared", workers=workers, size=size,
                               shard_size=256, progress=False)
    seconds = time.perf_counter() - start
    stats = load_stats(root / "prepared" / manifest["stats"]["file"], manifest["stats"]["key"])
    return {"src": root / "src", "prepared": root / "prepared", "stats": stats, "size": size,
            "crop": size - size // 9, "mean_kb": float(np.mean(sizes)) / 1e3,
            "prepare_images_per_s": (num_images + classes) / seconds, "prepare_workers": workers}


def _loader(dataset, workers: int, **kw) -> DataLoader:
    # Persistent workers: a pass times the pipeline, not the workers' start.
    return DataLoader(dataset, batch_size=CPU_BATCH, shuffle=True, num_workers=workers,
                      prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
                      **kw)


def folder_pipeline(data: dict, workers: int):
    """The ImageFolder path over the training split: (loader, batch -> images)."""
    dataset = SafeImageFolder(data["src"] / "train", transform=train_transform(
        data["stats"], size=data["size"], crop=data["crop"]))
    return _loader(dataset, workers, collate_fn=collate_skip_none), lambda batch: batch[0]


def prepared_pipeline(data: dict, workers: int, device="cpu"):
    """The prepared path with CPU decode; the batched augmentation runs on ``device`` in this
    process."""
    transform = BatchTrainTransform(data["stats"], size=data["size"], crop=data["crop"]).to(device)
    loader = _loader(PreparedImages(data["prepared"], "train"), workers,
                     collate_fn=collate_skip_none, pin_memory=device == "cuda")
    return loader, lambda batch: transform(batch[0].to(device, non_blocking=True))


class RawImages(torch.utils.data.Dataset):
    """The format not chosen, for comparison: every prepared image as raw uint8 [3, S, S] in
    one memory-mapped file (no decode; 192 KiB an image at 256 px)."""

    def __init__(self, path: Path, prepared: PreparedImages):
        self.path, self.targets, s = path, [], prepared.size
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                          shape=(len(prepared), 3, s, s))
        for i in range(len(prepared)):
            image, target = prepared[i]
            array[i] = image.numpy()
            self.targets.append(target)
        array.flush()
        del array
        self._array = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        if self._array is None:  # opened in each worker
            self._array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[i])), self.targets[i]

    def __getstate__(self):
        return {**self.__dict__, "_array": None}


def raw_pipeline(data: dict, workers: int, device="cpu"):
    """The raw uint8 memmap (:class:`RawImages`), augmented as prepared data."""
    if "raw" not in data:
        data["raw"] = RawImages(data["prepared"] / "raw.npy",
                                PreparedImages(data["prepared"], "train"))
    transform = BatchTrainTransform(data["stats"], size=data["size"], crop=data["crop"]).to(device)
    return _loader(data["raw"], workers), lambda batch: transform(batch[0].to(device))


def timed_pass(pipeline, device="cpu") -> tuple[int, float]:
    """One pass over a pipeline's loader, each batch consumed: (images, seconds)."""
    loader, consume = pipeline
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += consume(batch).shape[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - start


def _one_thread(fn, *args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: as in a DataLoader worker
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def imagenet(bench_mode, tmp_path_factory):
    if bench_mode == "smoke":
        return make_imagenet_like(tmp_path_factory.mktemp("imagenet"), 8, classes=2, w=40, h=30)
    return make_imagenet_like(tmp_path_factory.mktemp("imagenet"), 256, workers=_cpus())


def _record_rate(benchmark, bench_mode, images: int, seconds: float, cores: int, **info):
    benchmark.extra_info.update(images=images, seconds=seconds, images_per_s=images / seconds,
                                images_per_s_per_core=images / seconds / cores, cores=cores,
                                **info)
    if bench_mode == "smoke" and os.environ.get("FASTALEX_BENCH_REHEARSE", "0") == "1":
        benchmark.extra_info.update(device="cpu (rehearsal)", rehearsal=True)
    if bench_mode == "full" or benchmark.extra_info.get("rehearsal"):
        from benchutil import _append_record  # the GPU check's bench.jsonl

        _append_record(benchmark)


@pytest.mark.parametrize("workers", ["1core", "w-all"])
@pytest.mark.parametrize("path", ["imagenet-folder", "prepared-cpu"])
def test_imagenet_sized(benchmark, bench_mode, imagenet, path, workers):
    benchmark.name = f"{path}-{workers}"
    num_workers = 0 if workers == "1core" or bench_mode == "smoke" else _cpus()
    make = folder_pipeline if path == "imagenet-folder" else prepared_pipeline
    pipeline = make(imagenet, num_workers)
    result = {}

    def one_pass():
        result["n"], result["s"] = (_one_thread(timed_pass, pipeline) if workers == "1core"
                                    else timed_pass(pipeline))

    _time(benchmark, one_pass, bench_mode)
    _record_rate(benchmark, bench_mode, result["n"], result["s"],
                 1 if workers == "1core" else num_workers + 1, case=benchmark.name,
                 workers=num_workers, mean_source_kb=imagenet["mean_kb"], size=imagenet["size"],
                 crop=imagenet["crop"])


@pytest.mark.parametrize("path", ["prepared-gpu"])
def test_prepared_gpu(benchmark, bench_mode, bench_device, imagenet, path):
    """nvJPEG decode + device augmentation of prepared data at batch 256 (the files' bytes
    in memory, repeated to 4096 images in full mode)."""
    benchmark.name = f"{path}-decode+augment"
    device = bench_device
    dataset = PreparedImages(imagenet["prepared"], "train", encoded=True)
    items = [dataset[i] for i in range(len(dataset))]
    if bench_mode == "full":
        items = (items * (4096 // len(items) + 1))[:4096]
    batches = [collate_encoded(items[i:i + GPU_BATCH]) for i in range(0, len(items), GPU_BATCH)]
    transform = BatchTrainTransform(imagenet["stats"], size=imagenet["size"],
                                    crop=imagenet["crop"]).to(device)

    def one_pass():
        for datas, _, paths in batches:
            images, _ = decode_images(datas, paths, device=device)
            x = transform(images)
            assert x.shape[1:] == (3, imagenet["crop"], imagenet["crop"])
        if device == "cuda":
            torch.cuda.synchronize()

    _time(benchmark, one_pass, bench_mode)
    seconds = benchmark.stats.stats.median
    info = dict(case=benchmark.name, size=imagenet["size"], crop=imagenet["crop"],
                batch=GPU_BATCH)
    if device == "cuda":
        info.update(device=torch.cuda.get_device_name(), gpu=torch.cuda.get_device_name())
    _record_rate(benchmark, bench_mode, len(items), seconds, 1, **info)


def cpu_comparison(root: Path, num_images: int, rounds: int) -> dict:
    """The CPU cases side by side: per core (one process, one thread) and with one worker per
    usable CPU; the best of ``rounds`` passes each (the machine may be shared)."""
    data = make_imagenet_like(root, num_images, workers=_cpus())
    cpus = _cpus()
    out = {"images": num_images, "mean_source_kb": round(data["mean_kb"], 1),
           "source_px": f"{IMAGENET_W}x{IMAGENET_H}", "source_quality": IMAGENET_QUALITY,
           "prepare_images_per_s": round(data["prepare_images_per_s"], 1),
           "prepare_workers": cpus, "cpus": cpus, "torch": torch.__version__,
           "prepared_kb": round(sum(f.stat().st_size for f in (
               data["prepared"] / "train").glob("*.jpgs")) / num_images / 1e3, 1)}
    for name, make in (("imagenet-folder", folder_pipeline), ("prepared-cpu", prepared_pipeline),
                       ("raw-memmap", raw_pipeline)):
        for workers in (0, cpus):
            pipeline = make(data, workers)
            run = (lambda: _one_thread(timed_pass, pipeline)) if workers == 0 else \
                (lambda: timed_pass(pipeline))
            run()  # warm-up: workers started, files in the page cache
            best = min(run()[1] for _ in range(rounds))
            if workers == 0:
                out[f"{name}-1core images/s"] = round(num_images / best, 1)
            else:
                out[f"{name}-w{cpus} images/s"] = round(num_images / best, 1)
                out[f"{name}-w{cpus} images/s per core"] = round(num_images / best / cpus, 1)
            del pipeline
    out["per-core ratio (1core)"] = round(out["prepared-cpu-1core images/s"]
                                          / out["imagenet-folder-1core images/s"], 2)
    out[f"ratio (w{cpus})"] = round(out[f"prepared-cpu-w{cpus} images/s"]
                                    / out[f"imagenet-folder-w{cpus} images/s"], 2)
    # decode alone: the prepared path's worker work, per core, without the augmentation
    dataset = PreparedImages(data["prepared"], "train")
    start = time.perf_counter()
    _one_thread(lambda: [dataset[i] for i in range(len(dataset))])
    out["prepared decode only, 1core images/s"] = round(
        num_images / (time.perf_counter() - start), 1)
    return out


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser(description="the data paths' CPU rates, side by side")
    parser.add_argument("--cpu", action="store_true", required=True)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        json.dump(cpu_comparison(Path(tmp), options.images, options.rounds), sys.stdout,
                  indent=1)
    print()
