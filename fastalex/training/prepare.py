"""``python -m fastalex.prepare --data DIR --out DIR2``: the paper's one-time preprocessing.

Every image of an ImageFolder tree (``train/`` and ``val/``) gets its shorter side resized to
256 and its centre 256x256 cropped, once, and is stored as a JPEG in large shard files with an
index (:mod:`fastalex.training.data.shards`); the mean image and RGB PCA of the training split
are computed in the same pass. ``python -m fastalex.train --data DIR2`` then decodes small
images instead of full-size ones (docs/data.md).

The shards are written in parallel (``-j`` processes). A shard is complete once its index is
renamed into place; a rerun of an interrupted command keeps the complete shards and writes the
rest. The training split is shuffled once (fixed seed) before it is cut into shards, so each
shard holds a mix of classes. An unreadable image is skipped with one warning line naming it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np

from fastalex.training.startup import HelpFormatter, UsageError, run_cli
from fastalex.training.system import usable_cpus

PROG = "python -m fastalex.prepare"
DEFAULTS = dict(size=256, quality=90, shard_size=1024)
PLAN = "prepare.json"  # the settings and source of a run, written first: a rerun must match it
_SHUFFLE_SEED = 0
_OURS_TOP = re.compile(r"(fastalex-prepared\.json|prepare\.json|fastalex-stats-\d+px\.pt|train|val"
                       r"|\..*\.tmp)")
_OURS_SPLIT = re.compile(r"(shard-\d{5}\.(jpgs|json|sums\.npz)|\..*\.tmp)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Prepare an ImageFolder tree once for fast training: shorter side to SIZE, "
                    "centre SIZExSIZE crop, stored as JPEGs in shard files, with the training "
                    "set's mean image and RGB PCA. Train on it with python -m fastalex.train "
                    "--data OUT. An interrupted run continues where it stopped when run again.")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="ImageFolder tree: DIR/train/<class>/<image>, DIR/val/<class>/<image>")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory: new, empty, or an earlier run's of the same command")
    p.add_argument("-j", "--workers", type=int, default=usable_cpus(), metavar="N",
                   help="processes that prepare shards (0: in this process)")
    p.add_argument("--size", type=int, default=DEFAULTS["size"],
                   help="side of the stored images (the training's --image-size)")
    p.add_argument("--quality", type=int, default=DEFAULTS["quality"],
                   help="JPEG quality of the stored images (1-100)")
    p.add_argument("--shard-size", type=int, default=DEFAULTS["shard_size"], metavar="N",
                   help="images per shard file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check(args) -> None:
    if args.workers < 0:
        raise UsageError(f"-j/--workers must be >= 0, got {args.workers}")
    if args.size < 1:
        raise UsageError(f"--size must be >= 1, got {args.size}")
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality must be in 1-100, got {args.quality}")
    if args.shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {args.shard_size}")


def _check_out(out: Path) -> None:
    """Refuse an output directory that holds anything but this command's files."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if not out.is_dir():
        return
    for entry in sorted(out.iterdir()):
        foreign = not _OURS_TOP.fullmatch(entry.name) or (
            entry.name in ("train", "val") and (not entry.is_dir() or any(
                not _OURS_SPLIT.fullmatch(f.name) for f in entry.iterdir())))
        if foreign:
            raise UsageError(f"--out {out}: holds {entry.name}, which is not prepared data: "
                             "give a new or empty directory (or one this command wrote)")


def _plan(data: Path, args) -> tuple[dict, dict[str, list[list]], list[str]]:
    """(the run's settings and source digest, split -> shards of (path, name, label), classes)."""
    from fastalex.training.data import datasets

    train_set, val_set = datasets.build_datasets(data, None, None)
    shards, digest = {}, hashlib.sha256()
    for split, folder in (("train", train_set), ("val", val_set)):
        samples = [(path, str(Path(path).relative_to(folder.root)), label)
                   for path, label in folder.samples]
        if split == "train":  # a fixed shuffle: each shard a mix of classes
            order = np.random.default_rng(_SHUFFLE_SEED).permutation(len(samples))
            samples = [samples[i] for i in order]
        for _, name, label in samples:
            digest.update(f"{split}\0{name}\0{label}\0".encode())
        shards[split] = [samples[i:i + args.shard_size]
                         for i in range(0, len(samples), args.shard_size)]
    plan = {"size": args.size, "quality": args.quality, "shard_size": args.shard_size,
            "classes": train_set.classes, "source_sha256": digest.hexdigest()}
    return plan, shards, train_set.classes


def _start(out: Path, plan: dict) -> None:
    """Write the plan of a new run, or check that an earlier run's plan is this one."""
    from fastalex.training.atomic import TMP_SUFFIX, write_atomic

    path = out / PLAN
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except ValueError:
            earlier = None
        if earlier != plan:
            changed = sorted(k for k in plan if not earlier or earlier.get(k) != plan[k])
            raise UsageError(f"--out {out}: holds data prepared with other settings or from "
                             f"other files ({', '.join(changed)} differ): give another --out, "
                             "or delete it to start again")
    else:
        write_atomic(path, lambda f: f.write(json.dumps(plan, indent=1).encode()))
    for directory in (out, out / "train", out / "val"):
        directory.mkdir(parents=True, exist_ok=True)
        for tmp in directory.glob(f".*{TMP_SUFFIX}"):  # what killed writers left behind
            tmp.unlink()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one image at a time: intra-op threads would only compete


def _report(meta: dict) -> None:
    from fastalex.training.data.datasets import CorruptImageWarning

    for path, reason in meta["skipped"]:
        warnings.warn(f"skipping unreadable image {path}: {reason}", CorruptImageWarning,
                      stacklevel=2)


def _write_all(out: Path, shards: dict, args) -> dict[str, list[dict]]:
    """Write every shard not yet complete; split -> the shards' indexes, in order."""
    from tqdm.auto import tqdm

    from fastalex.training.data import shard_writer

    metas = {split: [None] * len(parts) for split, parts in shards.items()}
    todo = []
    for split, parts in shards.items():
        for i, samples in enumerate(parts):
            metas[split][i] = shard_writer.shard_done(out / split, i, split == "train")
            if metas[split][i] is None:
                todo.append((split, i, samples))
    total = sum(len(s) for parts in shards.values() for s in parts)
    left = sum(len(samples) for _, _, samples in todo)
    bar = tqdm(total=total, initial=total - left, unit="img", desc="prepare",
               disable=args.no_progress, smoothing=0.05)

    job = functools.partial(shard_writer.write_shard, size=args.size, quality=args.quality)

    def done(split, i, samples, meta):
        metas[split][i] = meta
        _report(meta)
        bar.update(len(samples))

    try:
        if args.workers == 0:
            for split, i, samples in todo:
                done(split, i, samples, job(out / split, i, samples, with_sums=split == "train"))
        else:
            with concurrent.futures.ProcessPoolExecutor(args.workers,
                                                        initializer=_init_worker) as pool:
                futures = {pool.submit(job, out / split, i, samples,
                                       with_sums=split == "train"): (split, i, samples)
                           for split, i, samples in todo}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        done(*futures[future], future.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    return metas


def _statistics(out: Path, metas: list[dict], size: int):
    from fastalex.training.data import shards, stats

    pixel_sum = np.zeros((3, size, size), dtype=np.float64)
    outer_sum = np.zeros((3, 3), dtype=np.float64)
    count = 0
    for i in range(len(metas)):
        with np.load(shards.shard_paths(out / "train", i)["sums"]) as sums:
            pixel_sum += sums["pixel_sum"]
            outer_sum += sums["outer_sum"]
            count += int(sums["count"])
    return stats.stats_from_sums(pixel_sum, outer_sum, count, size)


def prepare(data, out, *, workers: int | None = None, size: int = DEFAULTS["size"],
            quality: int = DEFAULTS["quality"], shard_size: int = DEFAULTS["shard_size"],
            progress: bool = True) -> dict:
    """Prepare the ImageFolder tree ``data`` into ``out``; returns the manifest."""
    args = argparse.Namespace(data=str(data), out=str(out), size=size, quality=quality,
                              shard_size=shard_size, no_progress=not progress,
                              workers=usable_cpus() if workers is None else workers)
    return _run(args)


def _run(args) -> dict:
    from fastalex.training.atomic import write_atomic
    from fastalex.training.data import shards, stats

    _check(args)
    data, out = Path(args.data).expanduser().absolute(), Path(args.out).expanduser().absolute()
    if out == data or data in out.parents:
        raise UsageError(f"--out {args.out}: must not be inside --data {args.data}")
    _check_out(out)
    plan, parts, classes = _plan(data, args)
    _start(out, plan)
    metas = _write_all(out, parts, args)
    image_stats = _statistics(out, metas["train"], args.size)
    stats_file = f"fastalex-stats-{args.size}px.pt"
    key = {"version": 1, "size": args.size, "prepared_sha256": plan["source_sha256"]}
    stats.save_stats(image_stats, out / stats_file, key)
    manifest = {
        "format": shards.FORMAT, "version": shards.VERSION, "size": args.size,
        "quality": args.quality, "classes": classes, "source": str(data),
        "stats": {"file": stats_file, "key": key},
        "splits": {split: {"shard_sizes": [len(m["labels"]) for m in ms],
                           "num_images": sum(len(m["labels"]) for m in ms),
                           "skipped": [p for m in ms for p, _ in m["skipped"]]}
                   for split, ms in metas.items()},
    }
    write_atomic(out / shards.MANIFEST,
                 lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['num_images']} images in {len(info['shard_sizes'])} shards"
              + (f", {len(info['skipped'])} unreadable skipped" if info["skipped"] else ""))
    print(f"wrote {out} (train on it: python -m fastalex.train --data {out})")
    return manifest


def main(argv=None) -> int:
    def command() -> int:
        _run(build_parser().parse_args(argv))
        return 0

    return run_cli(PROG, command, interrupted="interrupted; run the same command again to "
                                              "continue (finished shards are kept)")
