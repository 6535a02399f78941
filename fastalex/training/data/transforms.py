"""The paper's preprocessing and augmentation, built from torchvision's v2 transforms.

The network sees raw pixel values (0-255) minus the training set's mean image, the scale the
paper's N(0, 0.01) initialisation assumes. Per image:

1. shorter side resized to ``size`` (256 in the paper), centre ``size x size`` crop;
2. to float32, 0-255; the mean image subtracted (or the per-channel mean, an option);
3. train: a random ``crop x crop`` crop (227), a horizontal flip with probability 1/2, and
   "fancy PCA" lighting; eval: the centre crop, or ten crops.

The mean image is subtracted before cropping, as in the paper (it is a 256x256 image); the
lighting shift is the same for every pixel, so applying it after the crop changes nothing and
touches fewer pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

if TYPE_CHECKING:
    from fastalex.training.data.stats import ImageStats

__all__ = [
    "BatchTrainTransform",
    "PCALighting",
    "StackCrops",
    "SubtractMean",
    "ToFloat255",
    "eval_transform",
    "train_transform",
]


class ToFloat255(torch.nn.Module):
    """PIL image (or uint8 tensor) -> float32 tensor [3, H, W] with values 0-255 (not scaled to
    [0, 1], unlike ``ToTensor``)."""

    def forward(self, image) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            image = F.pil_to_tensor(image)
        return image.to(torch.float32)


class SubtractMean(torch.nn.Module):
    """Subtract the training set's mean: a mean image [3, S, S] (the paper) or a per-channel
    mean [3]."""

    def __init__(self, mean: torch.Tensor):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        if mean.dim() == 1 and mean.shape[0] == 3:
            mean = mean.view(3, 1, 1)
        elif not (mean.dim() == 3 and mean.shape[0] == 3):
            raise ValueError(f"mean must have shape [3, S, S] or [3], got {list(mean.shape)}")
        self.register_buffer("mean", mean)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.mean.shape[1:] != (1, 1) and image.shape[-2:] != self.mean.shape[1:]:
            raise ValueError(
                f"image: size {list(image.shape[-2:])} does not match the mean image's "
                f"{list(self.mean.shape[1:])}"
            )
        return image - self.mean.to(image.device)


class PCALighting(torch.nn.Module):
    """The paper's "fancy PCA": add ``sum_i alpha_i * eigvals[i] * eigvecs[:, i]`` to every pixel,
    with ``alpha_i ~ N(0, std)`` drawn from torch's RNG on each call (a new draw per image and
    epoch; for a batch [N, 3, H, W], one draw per image).

    The shift is used as given: :func:`train_transform` passes the square roots of the
    covariance's eigenvalues (see there why).
    """

    def __init__(self, eigvals: torch.Tensor, eigvecs: torch.Tensor, std: float = 0.1):
        super().__init__()
        eigvals = torch.as_tensor(eigvals, dtype=torch.float32)
        eigvecs = torch.as_tensor(eigvecs, dtype=torch.float32)
        if eigvals.shape != (3,):
            raise ValueError(f"eigvals must have shape [3], got {list(eigvals.shape)}")
        if eigvecs.shape != (3, 3):
            raise ValueError(f"eigvecs must have shape [3, 3], got {list(eigvecs.shape)}")
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std!r}")
        self.register_buffer("eigvals", eigvals)
        self.register_buffer("eigvecs", eigvecs)
        self.std = float(std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image + self.shift(image)

    def shift(self, image: torch.Tensor) -> torch.Tensor:
        """A new draw of the shift for ``image`` [..., 3, H, W]: [..., 3, 1, 1], its dtype."""
        if image.dim() < 3 or image.shape[-3] != 3:
            raise ValueError(f"image: expected [..., 3, H, W], got {list(image.shape)}")
        alpha = torch.randn(image.shape[:-3] + (3,), device=image.device) * self.std
        eigvals = self.eigvals.to(image.device)
        eigvecs = self.eigvecs.to(image.device)
        shift = (alpha * eigvals) @ eigvecs.T  # [..., 3]: sum_i alpha_i lambda_i p_i
        return shift[..., :, None, None].to(image.dtype)

    def extra_repr(self) -> str:
        return f"std={self.std}"


class StackCrops(torch.nn.Module):
    """The tuple of crops from ``TenCrop`` -> one tensor [10, 3, H, W]."""

    def forward(self, crops) -> torch.Tensor:
        return torch.stack(list(crops))


def _check(stats: ImageStats, size: int, crop: int, per_channel_mean: bool) -> torch.Tensor:
    """Validate the sizes; return the mean to subtract."""
    for arg, value in (("size", size), ("crop", crop)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    if crop > size:
        raise ValueError(f"crop ({crop}) must not exceed size ({size})")
    if per_channel_mean:
        return stats.mean_rgb
    if stats.size != size:
        raise ValueError(
            f"size ({size}) differs from the statistics' image size ({stats.size}): compute the "
            "statistics at the same size, or use per_channel_mean=True"
        )
    return stats.mean_image


def _preprocess(size: int, mean: torch.Tensor) -> list:
    return [
        v2.Resize(size, antialias=True),  # shorter side -> size (PIL resize on PIL images)
        v2.CenterCrop(size),
        ToFloat255(),
        SubtractMean(mean),
    ]


def train_transform(
    stats: ImageStats,
    *,
    size: int = 256,
    crop: int = 227,
    per_channel_mean: bool = False,
    pca_std: float = 0.1,
    crop_flip: bool = True,
) -> v2.Compose:
    """PIL image -> float32 [3, crop, crop]: the paper's training pipeline.

    ``crop_flip=False`` takes the centre crop and never flips (the ablation of the paper's
    translations and reflections; the lighting is ``pca_std``'s business).

    PCA lighting scales each eigenvector by ``alpha_i * sqrt(eigval_i)``: the standard deviation
    of the pixel values along that eigenvector, so the shift is in pixel units and the same
    whatever scale the statistics were taken on. The paper's text says "eigenvalue"; with
    variances of 0-255 values (thousands) and alpha ~ N(0, 0.1) that would shift colours by
    hundreds of levels, which cannot be what it did; the square root gives shifts of a few
    levels, the "intensity and color of the illumination" changes the paper describes, and is
    what the widely used re-implementations do. ``pca_std=0`` turns the lighting off.
    """
    mean = _check(stats, size, crop, per_channel_mean)
    steps = _preprocess(size, mean)
    steps += [v2.RandomCrop(crop), v2.RandomHorizontalFlip()] if crop_flip else \
        [v2.CenterCrop(crop)]
    if pca_std > 0:
        steps.append(PCALighting(stats.eigvals.clamp(min=0).sqrt(), stats.eigvecs, pca_std))
    return v2.Compose(steps)


def eval_transform(
    stats: ImageStats,
    *,
    size: int = 256,
    crop: int = 227,
    per_channel_mean: bool = False,
    ten_crop: bool = False,
) -> v2.Compose:
    """PIL image -> float32 [3, crop, crop] (centre crop) or [10, 3, crop, crop] (ten crops).

    Ten crops come in torchvision's ``TenCrop`` order: 0-4 are the top-left, top-right,
    bottom-left, bottom-right and centre crops of the image; 5-9 the same five positions in the
    horizontally flipped image, so crop 5 is the mirror image of crop 1 (top-right), 6 of crop
    0, 7 of crop 3, 8 of crop 2 and 9 of crop 4. A batch of them is [N, 10, 3, crop, crop]:
    flatten to [N * 10, ...] for the network and average the softmax over the 10.
    """
    mean = _check(stats, size, crop, per_channel_mean)
    steps = _preprocess(size, mean)
    steps += [v2.TenCrop(crop), StackCrops()] if ten_crop else [v2.CenterCrop(crop)]
    return v2.Compose(steps)


class BatchTrainTransform(torch.nn.Module):
    """:func:`train_transform` for a batch of decoded images on one device (the GPU decoding
    path, see :func:`~fastalex.training.data.datasets.decode_images`, and prepared data): a
    list of uint8 [3, H, W] tensors, or one uint8 [N, 3, size, size] tensor, -> float32
    [N, 3, crop, crop] on their device.

    The same steps; the resize is torch's antialiased bilinear instead of PIL's, so values can
    differ from the CPU path by a level or so. Each image gets its own crop, flip and lighting;
    the crop and flip are one gather (a flipped crop reads its columns backwards);
    ``crop_flip=False`` takes every image's centre crop, unflipped.
    """

    def __init__(
        self,
        stats: ImageStats,
        *,
        size: int = 256,
        crop: int = 227,
        per_channel_mean: bool = False,
        pca_std: float = 0.1,
        crop_flip: bool = True,
    ):
        super().__init__()
        mean = _check(stats, size, crop, per_channel_mean)
        self.size, self.crop, self.crop_flip = size, crop, crop_flip
        self.register_buffer("mean", mean.view(3, 1, 1) if per_channel_mean else mean.clone())
        self.lighting = (
            PCALighting(stats.eigvals.clamp(min=0).sqrt(), stats.eigvecs, pca_std)
            if pca_std > 0
            else None
        )

    def forward(self, images: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if len(images) == 0:
            raise ValueError("images: empty batch")
        if isinstance(images, torch.Tensor) and images.dim() == 4 \
                and images.shape[-2:] == (self.size, self.size):
            square = images  # a batch already at size x size (prepared data): no resize
        else:
            square = torch.stack([F.center_crop(F.resize(im, [self.size], antialias=True),
                                                [self.size]) for im in images])
        n, c, device = square.shape[0], self.crop, square.device
        if self.crop_flip:
            top = torch.randint(0, self.size - c + 1, (n,), device=device)
            left = torch.randint(0, self.size - c + 1, (n,), device=device)
            flip = torch.rand(n, device=device) < 0.5
        else:  # torchvision's CenterCrop: the offset rounds half up
            top = left = torch.full((n,), int(round((self.size - c) / 2.0)), device=device)
            flip = torch.zeros(n, dtype=torch.bool, device=device)
        mean = self.mean.to(device)
        # Crop (and flip) first, then subtract the same window of the mean image: the same
        # values as subtracting before the crop, on a fifth fewer pixels and uint8 reads.
        crop_batch = self._crop_each if device.type == "cpu" else self._crop_gather
        x = crop_batch(square, mean, top, left, flip)
        if self.lighting is not None:  # in place: x is this call's own tensor
            x.add_(self.lighting.shift(x))
        return x

    def _crop_gather(self, square, mean, top, left, flip) -> torch.Tensor:
        """A GPU's way: one gather for the batch; a flipped crop reads its columns backwards."""
        n, c, device = square.shape[0], self.crop, square.device
        steps = torch.arange(c, device=device)
        rows = (top[:, None] + steps)[:, :, None]  # [N, c, 1]
        cols = (left[:, None] + torch.where(flip[:, None], c - 1 - steps, steps))[:, None]
        batch = torch.arange(n, device=device)[:, None, None]
        x = square[batch, :, rows, cols].permute(0, 3, 1, 2).to(torch.float32)  # [N, 3, c, c]
        if mean.shape[1:] != (1, 1):
            mean = mean[:, rows, cols].transpose(0, 1)  # [N, 3, c, c]
        return (x - mean).contiguous()

    def _crop_each(self, square, mean, top, left, flip) -> torch.Tensor:
        """The CPU's way: one slice per image, written straight into the output (a batched
        gather costs several times more on a CPU)."""
        tops, lefts, flips = top.tolist(), left.tolist(), flip.tolist()
        c, size = self.crop, self.size
        full = mean.shape[1:] != (1, 1)
        mirrored = mean.flip(-1) if full else mean
        out = torch.empty(square.shape[0], 3, c, c, dtype=torch.float32)
        for i, (t, l, f) in enumerate(zip(tops, lefts, flips)):
            window = square[i, :, t:t + c, l:l + c]
            m = mean
            if f:  # column j of the flipped crop is column l + c - 1 - j of the image
                window = window.flip(-1)
                m = mirrored[:, :, size - l - c:size - l] if full else mean
            elif full:
                m = mean[:, :, l:l + c]
            torch.sub(window.float(), m[:, t:t + c] if full else m, out=out[i])
        return out
