"""The pictures a training run leaves behind: learning curves, the first-layer kernels and
the image montages of :mod:`fastalex.training.figures`.

Matplotlib with the non-interactive Agg backend, so plotting works on headless machines.
"""

import math
from pathlib import Path

import torch

from fastalex.training.atomic import write_atomic


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Write matplotlib figure ``fig`` to ``path`` as a PNG (100 dpi), atomically, and close
    it."""
    plt = pyplot()
    try:
        return write_atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def training_curves(history: list[dict], path) -> Path:
    """Training loss, validation top-1/top-5 error and the learning rate per epoch, as a PNG.

    ``history`` holds the rows of metrics.jsonl (keys epoch, train_loss, val_top1_error,
    val_top5_error, lr; errors are fractions).
    """
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_err, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    if history and "val_loss" in history[0]:
        ax_loss.plot(epochs, [row["val_loss"] for row in history], marker="o", label="val loss")
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_loss.legend()
    for key, label in (("val_top1_error", "top-1"), ("val_top5_error", "top-5")):
        ax_err.plot(epochs, [100 * row[key] for row in history], marker="o", label=f"val {label}")
    if history and "train_top1_error" in history[0]:
        ax_err.plot(epochs, [100 * row["train_top1_error"] for row in history], marker="o",
                    label="train top-1")
    ax_err.set(title="error", xlabel="epoch", ylabel="error (%)", ylim=(0, 100))
    ax_err.legend()
    lrs = [row["lr"] for row in history]
    ax_lr.plot(epochs, lrs, marker="o")
    ax_lr.set(title="learning rate (at the epoch's start)", xlabel="epoch",
              yscale="log" if lrs and min(lrs) > 0 else "linear")
    for ax in (ax_loss, ax_err, ax_lr):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def contrast_normalise(weight: torch.Tensor) -> torch.Tensor:
    """Each kernel of ``weight`` [K, 3, h, w] mapped to [0, 1] for display: its mean removed,
    divided by its largest absolute value, mid-grey at 0.5. Zero stays mid-grey in every
    tile, so a tile's colour is the sign and colour of its weights, whatever their magnitude."""
    w = weight.detach().float().cpu()
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    peak = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return 0.5 + 0.5 * w / peak


def montage(tiles: torch.Tensor, *, pad: int = 1, row_gap_after=(), col_gap_after=(),
            gap: int = 0) -> torch.Tensor:
    """Tiles [R, C, 3, h, w] (values in [0, 1]) laid out as one white-padded image [3, H, W]:
    ``pad`` pixels between tiles, ``gap`` more after the rows in ``row_gap_after`` and the
    columns in ``col_gap_after`` (0-based), to set groups of tiles apart."""
    rows, cols, _, h, w = tiles.shape

    def offsets(n, size, gaps):
        starts, at = [], pad
        for i in range(n):
            starts.append(at)
            at += size + pad + (gap if i in gaps else 0)
        return starts, at

    ys, height = offsets(rows, h, set(row_gap_after))
    xs, width = offsets(cols, w, set(col_gap_after))
    image = torch.ones(3, height, width)
    for r in range(rows):
        for c in range(cols):
            image[:, ys[r]:ys[r] + h, xs[c]:xs[c] + w] = tiles[r, c]
    return image


def save_image(image: torch.Tensor, path, *, scale: int = 4) -> Path:
    """An image [3, H, W] in [0, 1] as a PNG of exactly (W * scale) x (H * scale) pixels,
    nearest-neighbour magnified."""
    plt = pyplot()
    array = image.clamp(0, 1).permute(1, 2, 0).numpy()
    fig = plt.figure(figsize=(array.shape[1] * scale / 100, array.shape[0] * scale / 100),
                     dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(array, interpolation="nearest")
    ax.axis("off")
    return save_figure(fig, path)


def kernel_grid(weight: torch.Tensor, path, *, columns: int = 12, scale: int = 4,
                groups: int = 1) -> Path:
    """The first-layer kernels (``weight`` [K, 3, h, w]) as a grid of RGB tiles, as in the
    paper's Figure 3: each kernel contrast-normalised on its own
    (:func:`contrast_normalise`), tiles magnified ``scale`` times with nearest-neighbour
    sampling. ``groups`` > 1 splits the kernels into that many equal blocks (the paper's
    towers), each starting a new row and set apart by a gap of one tile."""
    w = weight.detach()
    if w.dim() != 4 or w.shape[1] != 3:
        raise ValueError(f"weight must have shape [K, 3, h, w], got {tuple(w.shape)}")
    count, _, h, wd = w.shape
    if groups < 1 or count % groups:
        raise ValueError(f"groups must divide the {count} kernels, got {groups}")
    tiles = contrast_normalise(w)
    per_group = count // groups
    group_rows = math.ceil(per_group / columns)
    blank = torch.ones(3, h, wd)
    cells = []
    for g in range(groups):
        block = list(tiles[g * per_group:(g + 1) * per_group])
        cells += block + [blank] * (group_rows * columns - len(block))
    grid = torch.stack(cells).view(groups * group_rows, columns, 3, h, wd)
    gaps = [(g + 1) * group_rows - 1 for g in range(groups - 1)]
    return save_image(montage(grid, row_gap_after=gaps, gap=h), path, scale=scale)
