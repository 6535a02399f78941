"""The pictures a training run leaves behind: learning curves and the first-layer kernels.

Matplotlib with the non-interactive Agg backend, so plotting works on headless machines.
"""

import math
from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict], path) -> Path:
    """Training loss, validation top-1/top-5 error and the learning rate per epoch, as a PNG.

    ``history`` holds the rows of metrics.jsonl (keys epoch, train_loss, val_top1_error,
    val_top5_error, lr; errors are fractions).
    """
    plt = _pyplot()
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
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def kernel_grid(weight: torch.Tensor, path, *, columns: int = 12, scale: int = 4) -> Path:
    """The first-layer kernels (``weight`` [K, 3, h, w]) as a grid of RGB tiles, as in the
    paper's Figure 3. Each kernel is scaled to [0, 1] on its own, so the pattern shows whatever
    its magnitude; tiles are magnified ``scale`` times with nearest-neighbour sampling."""
    plt = _pyplot()
    w = weight.detach().float().cpu()
    if w.dim() != 4 or w.shape[1] != 3:
        raise ValueError(f"weight must have shape [K, 3, h, w], got {tuple(w.shape)}")
    count, _, h, wd = w.shape
    lo = w.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = w.flatten(1).max(1).values.view(-1, 1, 1, 1)
    tiles = (w - lo) / (hi - lo).clamp_min(1e-12)
    rows, pad = math.ceil(count / columns), 1
    grid = torch.ones(3, rows * (h + pad) + pad, columns * (wd + pad) + pad)
    for i in range(count):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (wd + pad)
        grid[:, y:y + h, x:x + wd] = tiles[i]
    image = grid.permute(1, 2, 0).numpy()
    fig = plt.figure(figsize=(image.shape[1] * scale / 100, image.shape[0] * scale / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(image, interpolation="nearest")
    ax.axis("off")
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
