"""fastalex.training.data.transforms: the paper's preprocessing and augmentation, per image
and batched, against NumPy and explicit slicing."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fastalex.training.data.transforms import (
    BatchTrainTransform,
    PCALighting,
    SubtractMean,
    ToFloat255,
    eval_transform,
    train_transform,
)
from image_helpers import make_stats, one_thread, random_image, which_crop  # noqa: F401


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_to_float255_and_subtract_mean():
    pixels = random_image(np.random.default_rng(2), 5, 7)
    x = ToFloat255()(Image.fromarray(pixels))
    assert x.dtype == torch.float32 and x.shape == (3, 5, 7)
    assert torch.equal(x, torch.from_numpy(pixels).permute(2, 0, 1).float())  # 0-255, not [0, 1]

    mean_image = torch.rand(3, 5, 7) * 255
    assert torch.equal(SubtractMean(mean_image)(x), x - mean_image)
    rgb = torch.tensor([10.0, 20.0, 30.0])
    assert torch.equal(SubtractMean(rgb)(x), x - rgb.view(3, 1, 1))
    with pytest.raises(ValueError, match="mean"):
        SubtractMean(torch.zeros(2, 5, 7))
    with pytest.raises(ValueError, match="image"):
        SubtractMean(mean_image)(torch.zeros(3, 4, 4))


def _pca_reference(image: np.ndarray, alpha: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray):
    shift = eigvecs.astype(np.float64) @ (alpha.astype(np.float64) * eigvals)  # sum_i a_i l_i p_i
    return image.astype(np.float64) + shift[..., :, None, None]


def test_pca_lighting_against_numpy():
    eigvals = np.array([500.0, 30.0, 4.0])
    eigvecs = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
    lighting = PCALighting(torch.tensor(eigvals), torch.tensor(eigvecs), std=0.1)
    image = torch.randn(3, 6, 5) * 50

    torch.manual_seed(123)
    alpha = (torch.randn(3) * 0.1).numpy()
    torch.manual_seed(123)
    out = lighting(image)
    expected = _pca_reference(image.numpy(), alpha, eigvals, eigvecs)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-4)
    # A new draw on every call.
    assert not torch.equal(lighting(image), lighting(image))

    # A batch gets one draw per image.
    batch = torch.randn(4, 3, 6, 5)
    torch.manual_seed(5)
    alphas = (torch.randn(4, 3) * 0.1).numpy()
    torch.manual_seed(5)
    out = lighting(batch)
    for n in range(4):
        expected = _pca_reference(batch[n].numpy(), alphas[n], eigvals, eigvecs)
        np.testing.assert_allclose(out[n].numpy(), expected, rtol=1e-5, atol=1e-4)

    assert torch.equal(
        PCALighting(torch.tensor(eigvals), torch.tensor(eigvecs), std=0.0)(image), image
    )
    with pytest.raises(ValueError, match="eigvecs"):
        PCALighting(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="std"):
        PCALighting(torch.ones(3), torch.eye(3), std=-1)


def _centre(n: int, crop: int) -> int:
    return int(round((n - crop) / 2.0))  # torchvision's centre-crop offset


def test_ten_crop_geometry():
    size, crop = 10, 6
    pixels = random_image(np.random.default_rng(4), size, size)
    mean_image = torch.rand(3, size, size) * 255
    stats = make_stats(mean_image)
    x = torch.from_numpy(pixels).permute(2, 0, 1).double() - mean_image.double()  # reference

    out = eval_transform(stats, size=size, crop=crop, ten_crop=True)(Image.fromarray(pixels))
    assert out.shape == (10, 3, crop, crop) and out.dtype == torch.float32
    c = _centre(size, crop)
    tl, tr = x[:, :crop, :crop], x[:, :crop, -crop:]
    bl, br = x[:, -crop:, :crop], x[:, -crop:, -crop:]
    centre = x[:, c : c + crop, c : c + crop]
    flip = lambda t: t.flip(-1)  # noqa: E731
    # TenCrop order: the five of the image, then the same five positions of the flipped image.
    expected = [tl, tr, bl, br, centre, flip(tr), flip(tl), flip(br), flip(bl), flip(centre)]
    for i, e in enumerate(expected):
        torch.testing.assert_close(out[i].double(), e, rtol=0, atol=1e-4, msg=f"crop {i}")

    single = eval_transform(stats, size=size, crop=crop)(Image.fromarray(pixels))
    torch.testing.assert_close(single.double(), centre, rtol=0, atol=1e-4)


def test_eval_resizes_shorter_side_and_per_channel_mean():
    size, crop = 8, 6
    pixels = random_image(np.random.default_rng(5), 12, 20)  # H=12, W=20 -> 8 x 13
    stats = make_stats(torch.rand(3, size, size) * 255)
    out = eval_transform(stats, size=size, crop=crop, per_channel_mean=True)(
        Image.fromarray(pixels)
    )
    resized = np.asarray(Image.fromarray(pixels).resize((13, 8), Image.BILINEAR)).astype(np.float64)
    x0 = _centre(13, size)
    square = torch.from_numpy(resized[:, x0 : x0 + size]).permute(2, 0, 1)
    c = _centre(size, crop)
    expected = square[:, c : c + crop, c : c + crop] - stats.mean_rgb.double().view(3, 1, 1)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4)

    with pytest.raises(ValueError, match="size"):
        eval_transform(stats, size=10, crop=6)  # the mean image is 8x8
    with pytest.raises(ValueError, match="crop"):
        train_transform(stats, size=8, crop=9)



def test_train_transform_crop_flip_and_lighting():
    size, crop = 9, 5
    pixels = random_image(np.random.default_rng(6), size, size)
    stats = make_stats(torch.rand(3, size, size) * 255, eigvals=(400.0, 100.0, 25.0))
    x = torch.from_numpy(pixels).permute(2, 0, 1).double() - stats.mean_image.double()
    plain = train_transform(stats, size=size, crop=crop, pca_std=0.0)
    lit = train_transform(stats, size=size, crop=crop, pca_std=0.1)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = plain(Image.fromarray(pixels)).double()
        assert out.shape == (3, crop, crop)
        seen.add(which_crop(out, x, crop, atol=1e-4))
        # Lighting draws after the crop and flip: with the same seed, the same crop plus one
        # RGB shift per image, built from the square roots of the eigenvalues.
        torch.manual_seed(seed)
        shift = lit(Image.fromarray(pixels)).double() - out
        per_channel = shift.mean(dim=(1, 2))
        torch.testing.assert_close(
            shift, per_channel.view(3, 1, 1).expand_as(shift), rtol=0, atol=1e-3
        )
        coords = stats.eigvecs.double().T @ per_channel / stats.eigvals.double().sqrt()  # alpha
        assert coords.abs().max() < 0.6  # |alpha| < 6 sigma
    assert len(seen) > 6  # the crops and flips vary
    lighting = lit.transforms[-1]
    assert isinstance(lighting, PCALighting)
    torch.testing.assert_close(lighting.eigvals, stats.eigvals.sqrt())


def test_transforms_pickle():
    # DataLoader workers started with spawn/forkserver receive the transforms by pickling.
    stats = make_stats(torch.rand(3, 8, 8))
    for t in (
        train_transform(stats, size=8, crop=6),
        eval_transform(stats, size=8, crop=6, ten_crop=True),
    ):
        pickle.loads(pickle.dumps(t))


DECODE_DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    ),
]



@pytest.mark.parametrize("device", DECODE_DEVICES)
def test_batch_train_transform(device):
    from torchvision.transforms.v2 import functional as F

    size, crop = 8, 5
    stats = make_stats(torch.rand(3, size, size) * 255, eigvals=(400.0, 100.0, 25.0))
    rng = np.random.default_rng(10)
    images = [
        torch.from_numpy(random_image(rng, h, w)).permute(2, 0, 1).to(device)
        for h, w in ((8, 8), (16, 12), (10, 20))
    ]
    # Reference: torchvision's resize (on the CPU) and centre crop of each image, mean removed.
    squares = [
        F.center_crop(F.resize(image.cpu(), [size], antialias=True), [size]).double()
        - stats.mean_image.double()
        for image in images
    ]
    # A GPU resize may round a value to the other neighbouring level.
    atol = 1e-4 if device == "cpu" else 1.01
    plain = BatchTrainTransform(stats, size=size, crop=crop, pca_std=0.0).to(device)
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out = plain(images)
        assert out.shape == (3, 3, crop, crop) and out.dtype == torch.float32
        assert out.device.type == device
        for n, square in enumerate(squares):
            seen.add(which_crop(out[n].cpu().double(), square, crop, atol))
    assert len(seen) > 6
    lit = BatchTrainTransform(stats, size=size, crop=crop, pca_std=0.1).to(device)
    torch.manual_seed(0)
    base = plain(images)
    torch.manual_seed(0)
    shift = (lit(images) - base).cpu()  # one RGB shift per image, different per image
    per_image = shift.mean(dim=(2, 3))
    torch.testing.assert_close(
        shift, per_image[:, :, None, None].expand_as(shift), rtol=0, atol=1e-3
    )
    assert not torch.allclose(per_image[0], per_image[1])
    with pytest.raises(ValueError, match="images"):
        plain([])


@pytest.mark.parametrize("size,crop", [(9, 5), (8, 5)])  # odd and even margins
def test_no_crop_flip_is_the_centre_crop(size, crop):
    pixels = random_image(np.random.default_rng(12), size + 3, size)
    stats = make_stats(torch.rand(3, size, size) * 255, eigvals=(400.0, 100.0, 25.0))
    fixed = train_transform(stats, size=size, crop=crop, pca_std=0.0, crop_flip=False)
    centre = eval_transform(stats, size=size, crop=crop)
    want = centre(Image.fromarray(pixels))
    for seed in range(5):
        torch.manual_seed(seed)
        assert torch.equal(fixed(Image.fromarray(pixels)), want)
    # The lighting still applies: one RGB shift on top of the same crop.
    lit = train_transform(stats, size=size, crop=crop, pca_std=0.1, crop_flip=False)
    shift = lit(Image.fromarray(pixels)) - want
    per_channel = shift.mean(dim=(1, 2))
    assert per_channel.abs().max() > 0
    torch.testing.assert_close(shift, per_channel.view(3, 1, 1).expand_as(shift), rtol=0,
                               atol=1e-3)


@pytest.mark.parametrize("device", DECODE_DEVICES)
@pytest.mark.parametrize("size,crop", [(9, 5), (8, 5)])
def test_batch_train_transform_without_crop_flip(device, size, crop):
    from torchvision.transforms.v2 import functional as F

    stats = make_stats(torch.rand(3, size, size) * 255)
    rng = np.random.default_rng(13)
    images = [torch.from_numpy(random_image(rng, h, w)).permute(2, 0, 1).to(device)
              for h, w in ((size, size), (16, 12), (10, 20))]
    fixed = BatchTrainTransform(stats, size=size, crop=crop, pca_std=0.0,
                                crop_flip=False).to(device)
    out = fixed(images).cpu()
    for n, image in enumerate(images):
        square = F.center_crop(F.resize(image.cpu(), [size], antialias=True), [size]).float()
        want = F.center_crop(square - stats.mean_image, [crop])  # torchvision's centre
        atol = 1e-4 if device == "cpu" else 1.01
        torch.testing.assert_close(out[n], want, rtol=0, atol=atol)
