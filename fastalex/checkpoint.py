"""Training checkpoints: written atomically, restored exactly.

A checkpoint is written to a temporary file in the destination's directory, flushed and fsynced,
then renamed over the old one with ``os.replace`` (atomic on POSIX and Windows) and the directory
fsynced, so a run killed at any moment leaves either the previous checkpoint or the new one, never
a torn file. Everything in it loads with ``torch.load(weights_only=True)``: RNG states that are
not tensors (Python's, NumPy's) are stored as tensors and plain tuples.
"""

import contextlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
BEST = "model_best.pt"
_TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """The permissions ``open()`` would give a new file (mkstemp's are owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_atomic(obj, path) -> Path:
    """``torch.save(obj, path)`` so that ``path`` is never seen half written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the destination: os.replace is only atomic within one file system.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # not on Windows
                os.fchmod(fd, _default_mode())
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(directory) -> None:
    """Delete temporary files a killed :func:`save_atomic` left behind in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for name in (CHECKPOINT, BEST):
        for tmp in directory.glob(f".{name}.*{_TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def load(path, map_location="cpu") -> dict:
    """Load a checkpoint written by this module (tensors and plain Python data only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state(sampler_generator: torch.Generator | None = None) -> dict:
    """Every random number generator a training run draws from."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # NumPy's state holds an ndarray, which weights_only loading refuses: store it as a tensor
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if sampler_generator is not None:
        state["sampler"] = sampler_generator.get_state()
    return state


def set_rng_state(state: dict, sampler_generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the generators it has.
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if sampler_generator is not None and "sampler" in state:
        sampler_generator.set_state(state["sampler"])
