"""Loading ImageFolder trees: checks with clear errors, and corrupt files skipped, not fatal.

A real ImageNet copy usually holds a few unreadable files; one of them should cost a warning
naming it, not a crashed epoch. :class:`SafeImageFolder` returns ``None`` for such a file and
:func:`collate_skip_none` drops it from the batch.

GPU decoding (optional, for when the CPUs cannot decode JPEGs as fast as the GPU trains):
:class:`EncodedImageFolder` + :func:`collate_encoded` make the DataLoader's workers only read
files; :func:`decode_images` decodes a batch with nvJPEG (``torchvision.io.decode_jpeg`` on
``device="cuda"``) in the training process, and
:class:`~fastalex.training.data.transforms.BatchTrainTransform` applies the paper's augmentation
there::

    loader = DataLoader(EncodedImageFolder(root), batch_size=128, collate_fn=collate_encoded)
    for datas, targets, paths in loader:
        images, keep = decode_images(datas, paths, device="cuda")
        x, y = batch_transform(images), targets[keep].cuda()
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

from fastalex.training.startup import UsageError

__all__ = [
    "CorruptImageWarning",
    "DataError",
    "EncodedImageFolder",
    "SafeImageFolder",
    "build_datasets",
    "collate_encoded",
    "collate_skip_none",
    "decode_images",
    "load_split",
]

_LAYOUT = "expected an ImageFolder tree: DIR/train/<class>/<image> and DIR/val/<class>/<image>"


class DataError(UsageError):
    """A problem with the user's data (missing or empty tree, no images, train/val classes that
    differ). The message is complete: a command prints it without a traceback."""


class CorruptImageWarning(UserWarning):
    """An image file could not be read; it is skipped."""


# What a loader raises for a file it cannot read or decode: PIL's UnidentifiedImageError and
# truncated data are OSErrors, a broken header can raise SyntaxError or ValueError, absurd sizes
# DecompressionBombError; torchvision.io raises RuntimeError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, RuntimeError, Image.DecompressionBombError)


class SafeImageFolder(ImageFolder):
    """torchvision's ImageFolder whose ``__getitem__`` returns ``None`` for an unreadable or
    corrupt image, after a :class:`CorruptImageWarning` naming the file (once per file and
    process: a DataLoader worker warns for the files it meets)."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, **kwargs: Any):
        super().__init__(root, transform=transform, **kwargs)
        self._warned: set[str] = set()

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        try:
            sample = self.loader(path)  # PIL: open + convert("RGB"), which decodes everything
        except _DECODE_ERRORS as exc:
            _warn_corrupt(path, exc, self._warned)
            return None
        if self.transform is not None:
            sample = self.transform(sample)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target


def collate_skip_none(batch: list) -> Any:
    """Drop the ``None`` samples (unreadable images), then ``torch``'s default_collate.

    A batch in which every image was unreadable collates to ``None``: a training loop skips it.
    """
    batch = [sample for sample in batch if sample is not None]
    if not batch:
        return None
    return default_collate(batch)


def _warn_corrupt(path: str, exc: BaseException, warned: set[str]) -> None:
    if path not in warned:
        warned.add(path)
        warnings.warn(f"skipping unreadable image {path}: {exc}", CorruptImageWarning, stacklevel=3)


@contextmanager
def _torchvision_io():
    # torchvision 0.29 deprecates its image decoders in favour of TorchCodec; they work on every
    # torchvision this project supports (0.26-0.29), so the per-call warning is noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        yield


def _read_file(path: str) -> torch.Tensor:
    with _torchvision_io():
        return read_file(path)


class EncodedImageFolder(SafeImageFolder):
    """An ImageFolder whose items are ``(file bytes as a 1-D uint8 tensor, target, path)``: the
    DataLoader's workers only read files, and :func:`decode_images` decodes them in the
    training process, on the GPU. A file that cannot be read gives ``None`` and a warning."""

    def __init__(self, root: str | os.PathLike, **kwargs: Any):
        super().__init__(root, loader=_read_file, **kwargs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str] | None:
        item = super().__getitem__(index)
        return None if item is None else (item[0], item[1], self.samples[index][0])


def collate_encoded(batch: list) -> tuple[list[torch.Tensor], torch.Tensor, list[str]] | None:
    """Batch of :class:`EncodedImageFolder` items -> (list of encoded files, targets [N], paths);
    ``None`` items are dropped (``None`` if none is left). The files stay a list: their lengths
    differ."""
    batch = [item for item in batch if item is not None]
    if not batch:
        return None
    datas, targets, paths = zip(*batch)
    return list(datas), torch.tensor(targets), list(paths)


_warned_decode: set[str] = set()  # once per file and process, like SafeImageFolder


def decode_images(
    datas: list[torch.Tensor], paths: list[str], device: str | torch.device = "cuda"
) -> tuple[list[torch.Tensor], list[int]]:
    """Decode encoded image files to RGB uint8 [3, H, W] tensors on ``device``.

    The batch goes to nvJPEG in one call (``decode_jpeg``, batched on CUDA). If that fails, the
    files are decoded one at a time: a JPEG that ``device`` cannot decode, or another format
    (ImageNet holds a PNG and some CMYK JPEGs), is decoded on the CPU and moved; a file nothing
    decodes is skipped with a :class:`CorruptImageWarning` naming it. Returns the images and
    the indices (into ``datas``) of the files they came from.
    """
    if not datas:
        return [], []
    with _torchvision_io():
        try:
            images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
            return images, list(range(len(datas)))
        except RuntimeError:
            pass  # one file that is not a (decodable) JPEG fails the whole batch: find it
        images, keep = [], []
        for i, (data, path) in enumerate(zip(datas, paths)):
            try:
                image = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            except RuntimeError:
                try:
                    image = decode_image(data, mode=ImageReadMode.RGB).to(device)
                except RuntimeError as exc:
                    _warn_corrupt(path, exc, _warned_decode)
                    continue
            images.append(image)
            keep.append(i)
    return images, keep


def load_split(data_dir: str | os.PathLike, split: str, transform: Callable | None,
               folder_class: type[SafeImageFolder] = SafeImageFolder) -> SafeImageFolder:
    """One split (``"train"`` or ``"val"``) of an ImageFolder tree, or a :class:`DataError`
    that says what is missing."""
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / split
    if not folder.is_dir():
        raise DataError(f"--data {data_dir}: no {split}/ directory ({_LAYOUT})")
    try:
        dataset = folder_class(folder, transform=transform)
    except FileNotFoundError as exc:  # ImageFolder: no class folder, or no image in any of them
        loose = [p.name for p in folder.iterdir() if p.is_file()][:3]
        hint = (
            f"; {split}/ holds files directly ({', '.join(loose)}, ...): sort them into "
            "<class>/ folders (for ILSVRC-2012 val, e.g. with torchvision.datasets.ImageNet)"
            if loose
            else ""
        )
        raise DataError(f"--data {data_dir}: no images in {split}/ ({exc}){hint}") from None
    return dataset


def build_datasets(
    data_dir: str | os.PathLike,
    train_transform: Callable | None,
    val_transform: Callable | None,
    *,
    train_folder: type[SafeImageFolder] = SafeImageFolder,
) -> tuple[SafeImageFolder, SafeImageFolder]:
    """The train and val datasets of an ImageFolder tree, after checking that ``data_dir/train``
    and ``data_dir/val`` exist, hold images, and have the same classes (else :class:`DataError`).
    Image files are those with torchvision's image extensions (.jpg, .jpeg, .png, ...).
    ``train_folder`` is the training split's dataset class (:class:`EncodedImageFolder` for
    decoding on the GPU, with ``train_transform`` None)."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.exists():
        raise DataError(f"--data {data_dir}: no such directory ({_LAYOUT})")
    if not data_dir.is_dir():
        raise DataError(f"--data {data_dir}: not a directory ({_LAYOUT})")
    train_set = load_split(data_dir, "train", train_transform, train_folder)
    val_set = load_split(data_dir, "val", val_transform)
    if train_set.classes != val_set.classes:
        only_train = sorted(set(train_set.classes) - set(val_set.classes))
        only_val = sorted(set(val_set.classes) - set(train_set.classes))
        raise DataError(
            f"--data {data_dir}: train/ and val/ have different classes "
            f"({len(train_set.classes)} vs {len(val_set.classes)}; only in train: "
            f"{only_train[:5]}{'...' if len(only_train) > 5 else ''}, only in val: "
            f"{only_val[:5]}{'...' if len(only_val) > 5 else ''})"
        )
    return train_set, val_set
