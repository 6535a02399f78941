"""The built-in dataset ("shapes"): generated on first use, never downloaded.

The images (fastalex.training.data.shapes) are JPEG files in an ImageFolder tree
(``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``), so the built-in data goes through
exactly the loading code a real ``--data`` tree does.

Generation is deterministic for a seed (each image has its own NumPy generator seeded from
``(seed, split, class, index)``), atomic (written into a temporary directory beside the root and
renamed into place; a manifest with the parameters and :data:`VERSION` is written last), and
reused when a complete tree with the same parameters already exists. A file lock makes
concurrent callers (e.g. the ranks of a ``torchrun`` job) wait for one generation instead of
repeating it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fastalex.training.data.shapes import CLASSES, render_image
from fastalex.training.presets import BUILTIN_DATA
from fastalex.training.system import usable_cpus

__all__ = [
    "CLASSES",
    "VERSION",
    "default_cache_dir",
    "ensure_builtin_dataset",
    "render_image",
]

# Bump whenever the drawing (shapes.py) changes: a cached tree from another version is
# regenerated.
VERSION = 2

_MANIFEST = "manifest.json"
_SPLITS = ("train", "val")
_JPEG_QUALITY = 90
# The manifest's label of the generator: fixed, since a tree whose manifest differs in anything
# is regenerated.
_GENERATOR = "fastalex.data.builtin"


def default_cache_dir() -> Path:
    """$FASTALEX_CACHE, else $XDG_CACHE_HOME/fastalex, else ~/.cache/fastalex."""
    if os.environ.get("FASTALEX_CACHE"):
        return Path(os.environ["FASTALEX_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fastalex"
    return Path.home() / ".cache" / "fastalex"


def _params(image_size: int, train_per_class: int, val_per_class: int, seed: int) -> dict:
    return {
        "image_size": image_size,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "jpeg_quality": _JPEG_QUALITY,
    }


def _manifest(params: dict) -> dict:
    return {
        "generator": _GENERATOR,
        "version": VERSION,
        "classes": list(CLASSES),
        "params": params,
    }


def _file_name(name: str, index: int) -> str:
    return f"{name}_{index:05d}.jpg"


def _is_complete(root: Path, params: dict) -> bool:
    """True when ``root`` holds a finished tree generated with exactly these parameters."""
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest != _manifest(params):
        return False
    for split in _SPLITS:
        count = params[f"{split}_per_class"]
        for name in CLASSES:
            folder = root / split / name
            if not folder.is_dir() or sum(1 for _ in os.scandir(folder)) != count:
                return False
    return True


def _chunks(params: dict, chunk: int = 50) -> list[tuple[str, int, int, int]]:
    """Work items (split, class index, first, stop): images [first, stop) of one folder."""
    items = []
    for split in _SPLITS:
        n = params[f"{split}_per_class"]
        for class_index in range(len(CLASSES)):
            items += [(split, class_index, i, min(i + chunk, n)) for i in range(0, n, chunk)]
    return items


def _render_chunk(tmp: Path, params: dict, item: tuple[str, int, int, int]) -> int:
    split, class_index, first, stop = item
    name = CLASSES[class_index]
    for i in range(first, stop):
        # One generator per image, seeded by its identity: the output does not depend on how
        # the work is split between processes.
        rng = np.random.default_rng([params["seed"], _SPLITS.index(split), class_index, i])
        image = render_image(name, rng, params["image_size"])
        image.save(tmp / split / name / _file_name(name, i), quality=params["jpeg_quality"])
    return stop - first


def _default_workers() -> int:
    return max(1, min(usable_cpus(), 8))


def _generate(tmp: Path, params: dict, progress: bool, workers: int) -> None:
    for split in _SPLITS:
        for name in CLASSES:
            (tmp / split / name).mkdir(parents=True)
    items = _chunks(params)
    total = len(CLASSES) * (params["train_per_class"] + params["val_per_class"])
    bar = tqdm(total=total, desc="generating built-in dataset", unit="img", disable=not progress)
    with bar:
        if workers <= 1 or total < 1000:  # a pool costs more than it saves on small trees
            for item in items:
                bar.update(_render_chunk(tmp, params, item))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for done in pool.map(partial(_render_chunk, tmp, params), items):
                    bar.update(done)
    with open(tmp / _MANIFEST, "w") as f:  # written last: its presence means a complete tree
        json.dump(_manifest(params), f, indent=2)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def _locked(lock_file: Path):
    """An exclusive advisory lock (POSIX flock; a no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

def _temp_prefix(root: Path) -> str:
    return f".{root.name}.tmp-"


def ensure_builtin_dataset(
    root: str | os.PathLike | None = None,
    *,
    image_size: int = BUILTIN_DATA["image_size"],
    train_per_class: int = BUILTIN_DATA["train_per_class"],
    val_per_class: int = BUILTIN_DATA["val_per_class"],
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """The root of the built-in ImageFolder tree, generated first if needed.

    ``root=None`` means ``default_cache_dir()/"shapes-v<VERSION>-<params>"``. A tree at
    ``root`` made with other parameters or by another :data:`VERSION` of the generator is
    replaced; a directory there that this generator did not make (no manifest) is never
    touched: that is a ``FileExistsError``. ``workers`` processes draw the images (default:
    the usable CPUs, at most 8); the result does not depend on it.
    """
    for arg, value, low in (
        ("image_size", image_size, 16),
        ("train_per_class", train_per_class, 1),
        ("val_per_class", val_per_class, 1),
        ("seed", seed, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{arg} must be an int >= {low}, got {value!r}")
    params = _params(image_size, train_per_class, val_per_class, seed)
    if root is None:
        tag = f"{image_size}px-{train_per_class}-{val_per_class}-seed{seed}"
        root = default_cache_dir() / f"shapes-v{VERSION}-{tag}"
    root = Path(root).expanduser().absolute()
    if _is_complete(root, params):
        return root

    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):
        if _is_complete(root, params):  # another process finished it while we waited
            return root
        if root.exists() and not (root / _MANIFEST).exists() and any(root.iterdir()):
            raise FileExistsError(
                f"{root} exists and is not a fastalex built-in dataset (no {_MANIFEST}); "
                "refusing to overwrite it: pass another root"
            )
        # Under the lock, any temporary tree left beside the root is from a generation that
        # was killed: it is removed, never reused.
        for leftover in root.parent.glob(_temp_prefix(root) + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(root), dir=root.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the tree from other users
            _generate(tmp, params, progress, workers or _default_workers())
            if root.exists():  # an outdated tree (or an empty directory): swap it out
                old = Path(tempfile.mkdtemp(prefix=_temp_prefix(root), dir=root.parent))
                os.rename(root, old / "old")
                os.rename(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root
