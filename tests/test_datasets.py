"""fastalex.training.data.datasets: ImageFolder checks with clear errors, corrupt files
skipped, the encoded-file path and its decoding (on the CPU here; on CUDA too when present)."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fastalex.training.data.datasets import (
    CorruptImageWarning,
    DataError,
    EncodedImageFolder,
    SafeImageFolder,
    build_datasets,
    collate_encoded,
    collate_skip_none,
    decode_images,
)
from fastalex.training.data.transforms import ToFloat255
from image_helpers import one_thread, random_image, write_tree  # noqa: F401 (fixture)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_corrupt_images_skipped_with_warning(tmp_path):
    rng = np.random.default_rng(7)
    write_tree(
        tmp_path, {"a/good.png": random_image(rng, 6, 6), "b/good.jpg": random_image(rng, 6, 6)}
    )
    good_jpeg = (tmp_path / "b" / "good.jpg").read_bytes()
    (tmp_path / "a" / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (tmp_path / "b" / "garbage.jpg").write_bytes(b"this is not an image")
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    dataset = SafeImageFolder(tmp_path, transform=ToFloat255())
    names = [Path(p).name for p, _ in dataset.samples]
    for bad in ("truncated.jpg", "garbage.jpg", "empty.png"):
        i = names.index(bad)
        with pytest.warns(CorruptImageWarning, match=bad):
            assert dataset[i] is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per file: no second warning
            assert dataset[i] is None
    x, target = dataset[names.index("good.png")]
    assert x.shape == (3, 6, 6) and target == 0

    loader = DataLoader(dataset, batch_size=5, collate_fn=collate_skip_none)
    ((images, targets),) = list(loader)
    assert images.shape == (2, 3, 6, 6) and targets.tolist() == [0, 1]
    assert collate_skip_none([None, None]) is None


def test_build_datasets_errors(tmp_path):
    rng = np.random.default_rng(8)
    with pytest.raises(DataError, match="no such directory"):
        build_datasets(tmp_path / "missing", None, None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        build_datasets(tmp_path / "file", None, None)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="no train/"):
        build_datasets(root, None, None)
    (root / "train").mkdir()
    with pytest.raises(DataError, match="no images in train/"):
        build_datasets(root, None, None)
    (root / "train" / "cat").mkdir()
    with pytest.raises(DataError, match="no images in train/"):  # a class folder, no image in it
        build_datasets(root, None, None)
    write_tree(
        root,
        {"train/cat/1.png": random_image(rng, 4, 4), "train/dog/1.png": random_image(rng, 4, 4)},
    )
    with pytest.raises(DataError, match="no val/"):
        build_datasets(root, None, None)
    write_tree(root, {"val/ILSVRC2012_val_00000001.JPEG": random_image(rng, 4, 4)})
    with pytest.raises(DataError, match="sort them into <class>/ folders"):
        build_datasets(root, None, None)
    write_tree(
        root, {"val/cat/1.png": random_image(rng, 4, 4), "val/emu/1.png": random_image(rng, 4, 4)}
    )
    with pytest.raises(
        DataError, match=r"different classes.*only in train: \['dog'\].*only in val: \['emu'\]"
    ):
        build_datasets(root, None, None)
    write_tree(root, {"val/dog/1.png": random_image(rng, 4, 4)})
    (root / "val" / "emu" / "1.png").unlink()
    (root / "val" / "emu").rmdir()
    train_set, val_set = build_datasets(root, ToFloat255(), ToFloat255())
    assert train_set.classes == val_set.classes == ["cat", "dog"]
    assert val_set[0][0].shape == (3, 4, 4)


DECODE_DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]



@pytest.mark.parametrize("device", DECODE_DEVICES)
def test_encoded_folder_and_decode(tmp_path, device):
    rng = np.random.default_rng(9)
    pixels = {
        "a/x.jpg": random_image(rng, 10, 14),
        "a/y.png": random_image(rng, 9, 9),
        "b/z.jpg": random_image(rng, 12, 8),
    }
    write_tree(tmp_path, pixels)
    (tmp_path / "b" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really")
    dataset = EncodedImageFolder(tmp_path)
    datas, targets, paths = collate_encoded([dataset[i] for i in range(len(dataset))])
    assert targets.tolist() == [0, 0, 1, 1]
    assert [Path(p).name for p in paths] == ["x.jpg", "y.png", "bad.jpg", "z.jpg"]
    assert all(d.dtype == torch.uint8 and d.dim() == 1 for d in datas)

    with pytest.warns(CorruptImageWarning, match="bad.jpg"):
        images, keep = decode_images(datas, paths, device=device)
    assert keep == [0, 1, 3]
    for image, i in zip(images, keep):
        with Image.open(paths[i]) as im:
            reference = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        assert image.device.type == device and image.dtype == torch.uint8
        # PNG is lossless; JPEG decoders may round differently (a level or two).
        tolerance = 0 if paths[i].endswith(".png") else 3
        assert (image.cpu().int() - reference.int()).abs().max() <= tolerance
    # A batch of good JPEGs decodes in one call.
    images, keep = decode_images([datas[0], datas[3]], [paths[0], paths[3]], device=device)
    assert keep == [0, 1] and images[1].shape == (3, 12, 8)
    assert decode_images([], [], device=device) == ([], [])
    assert collate_encoded([None]) is None
