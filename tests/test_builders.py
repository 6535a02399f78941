"""fastalex.training.builders: the loaders' batches are a function of the seed, and the GPU
decoding path makes the batches the CPU path makes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from fastalex.training import builders, options
from fastalex.training.distributed import DistInfo
from image_helpers import random_image, which_crop, write_tree
from train_helpers import TINY, tiny_data  # noqa: F401 (fixture)

SIZE, CROP = 70, 67  # TINY's --image-size and --crop


def _loaders(args, seed_epoch=0):
    """(train loader, prepare, image stats), the generator seeded for epoch ``seed_epoch``."""
    info, device = DistInfo(), torch.device("cpu")
    data_dir, image_stats = builders.locate_data(args, info, Path(args.data))
    train_set, val_set = builders.build_datasets(args, data_dir, image_stats)
    generator = torch.Generator()
    loader, _, _ = builders.make_loaders(args, info, train_set, val_set, device, generator)
    generator.manual_seed(builders.epoch_seed(args.seed, seed_epoch, 0))
    return loader, builders.train_batch_preparer(args, image_stats, device), image_stats


def test_seeded_workers_make_the_same_batches(tiny_data):
    """With worker processes the epoch's augmentation comes from the re-seeded generator."""
    args = options.resolve(["--data", str(tiny_data), *TINY, "-j", "2"])
    batches = []
    for _ in range(2):
        loader, _, _ = _loaders(args, seed_epoch=4)
        batches.append(next(iter(loader)))
    assert torch.equal(batches[0][0], batches[1][0])
    assert torch.equal(batches[0][1], batches[1][1])


@pytest.fixture(scope="module")
def png_tree(tmp_path_factory) -> tuple[Path, dict]:
    """A tree of random 70 x 70 PNGs (already at --image-size, lossless: both paths see the
    same pixels, and neither resizes)."""
    root = tmp_path_factory.mktemp("png")
    rng = np.random.default_rng(11)
    images = {f"{split}/c{c}/{i}.png": random_image(rng, SIZE, SIZE)
              for split, n in (("train", 6), ("val", 1)) for c in range(4) for i in range(n)}
    write_tree(root, images)
    return root, {str(root / rel): pixels for rel, pixels in images.items()}


def _epochs(args, epochs=3):
    """Every training batch of ``epochs`` epochs as (images, targets, paths): the GPU path's
    batches name their files; the CPU path's do not (None)."""
    out = []
    for epoch in range(epochs):
        torch.manual_seed(100 + epoch)
        loader, prepare, image_stats = _loaders(args, seed_epoch=epoch)
        for batch in loader:
            paths = batch[2] if prepare is not None else None
            out.append((*(prepare(batch) if prepare is not None else batch), paths))
    return out, image_stats


def _square(pixels: np.ndarray, image_stats) -> torch.Tensor:
    """The file as both paths preprocess it before the random crop: float32, mean subtracted."""
    return torch.from_numpy(pixels).permute(2, 0, 1).float() - image_stats.mean_image


def _lighting_shift(image: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
    """The RGB shift [3] by which ``image`` differs from exactly one crop (flipped or not) of
    ``square``, a constant per channel."""
    shifts = []
    for top in range(SIZE - CROP + 1):
        for left in range(SIZE - CROP + 1):
            crop = square[:, top:top + CROP, left:left + CROP]
            for candidate in (crop, crop.flip(-1)):
                shift = (image - candidate).double()
                rgb = shift.mean(dim=(1, 2))
                if (shift - rgb[:, None, None]).abs().max() < 2e-3:
                    shifts.append(rgb)
    assert len(shifts) == 1, f"{len(shifts)} crops plus a constant RGB shift match"
    return shifts[0]


def test_gpu_decode_batches_match_the_cpu_path(png_tree):
    """--gpu-decode feeds the same files in the same order with the same targets, each image
    an exact crop (flipped or not) of the same preprocessed image, with crops and flips drawn
    as often; with lighting, one RGB shift per image along the same PCA axes, of the same
    spread (the random draws come in another order, so the values differ image by image)."""
    root, pixels = png_tree
    common = ["--data", str(root), *TINY, "-b", "5"]
    results = {}
    for name, extra in (("cpu", []), ("gpu", ["--gpu-decode"])):
        for pca in ("0", "0.1"):
            results[name, pca] = _epochs(options.resolve([*common, *extra, "--pca-std", pca]))
    image_stats = results["cpu", "0"][1]
    reference = results["gpu", "0"][0]  # the order of the files, which every run shares
    crops, alphas = {}, {}
    for (name, pca), (batches, _) in results.items():
        assert [t.tolist() for _, t, _ in batches] == [t.tolist() for _, t, _ in reference]
        found = []
        for (images, _, _), (_, _, paths) in zip(batches, reference):
            assert images.shape[1:] == (3, CROP, CROP) and images.dtype == torch.float32
            for image, path in zip(images, paths):  # a file in another order matches no crop
                square = _square(pixels[path], image_stats)
                if pca == "0":
                    found.append(which_crop(image, square, CROP, atol=1e-4))
                else:
                    rgb = _lighting_shift(image, square)
                    found.append(image_stats.eigvecs.double().T @ rgb
                                 / image_stats.eigvals.double().sqrt())
        (crops if pca == "0" else alphas)[name] = found
    for name in ("cpu", "gpu"):
        assert len(set(crops[name])) > 20  # 72 crops: positions and flips vary
        flips = sum(flip for _, _, flip in crops[name]) / len(crops[name])
        assert 0.3 < flips < 0.7
        spread = torch.stack(alphas[name]).std().item()  # alpha ~ N(0, 0.1) per axis
        assert 0.07 < spread < 0.13, (name, spread)


def test_build_model_follows_the_model_flags():
    from fastalex.models import AlexNet, ConvNet4

    device = torch.device("cpu")
    args = options.resolve(["--impl", "torch", "--no-conv4", "--device", "cpu"])
    model = builders.build_model(args, 10, device)
    assert isinstance(model, AlexNet) and model.config["conv4"] is False
    assert not hasattr(model.features, "conv4")
    args = options.resolve(["--model", "convnet4", "--activation", "tanh", "--impl", "torch",
                            "--image-size", "32", "--crop", "32", "--device", "cpu"])
    model = builders.build_model(args, 7, device)
    assert isinstance(model, ConvNet4)
    assert model.config == dict(num_classes=7, activation="tanh", image_size=32, impl="torch")


def test_no_crop_flip_trains_on_the_centre_crop(tiny_data):
    args = options.resolve([*TINY, "--data", str(tiny_data), "--no-crop-flip", "--pca-std",
                            "0"])
    _, image_stats = builders.locate_data(args, DistInfo(), tiny_data)
    train_set, val_set = builders.build_datasets(args, tiny_data, image_stats)
    for i in (0, 7, 23):
        torch.manual_seed(i)
        first = train_set[i][0]
        torch.manual_seed(i + 100)
        # Every draw gives the validation (centre) crop of the same image.
        assert torch.equal(first, train_set[i][0])
        assert torch.equal(first, builders.val_transform(args, image_stats, False)(
            train_set.loader(train_set.samples[i][0])))
