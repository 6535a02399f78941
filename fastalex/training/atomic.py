"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never a
torn one.

The content goes to a temporary file in the destination's directory, is flushed and fsynced,
and is renamed over the destination with ``os.replace`` (atomic on POSIX and Windows); the
directory is fsynced so the rename itself survives a crash.
"""

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

TMP_SUFFIX = ".tmp"


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


def write_atomic(path, write: Callable[[BinaryIO], object]) -> Path:
    """Replace ``path`` with what ``write(file)`` writes into a binary file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the destination: os.replace is only atomic within one file system.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):  # not on Windows
                os.fchmod(fd, _default_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def save_atomic(obj, path) -> Path:
    """``torch.save(obj, path)`` so that ``path`` is never seen half written."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(directory, names) -> None:
    """Delete the temporary files that killed writers of ``names`` left in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for name in names:
        for tmp in directory.glob(f".{name}.*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()
