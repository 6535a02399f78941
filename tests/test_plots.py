"""fastalex.training.plots: the PNGs a run leaves (written atomically), and the kernel grid's
input check."""

import pytest
import torch
from PIL import Image

from fastalex.training import plots


def test_training_curves_and_kernel_grid(tmp_path):
    history = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "val_top1_error": 0.9 / e,
                "val_top5_error": 0.5 / e, "train_top1_error": 0.8 / e, "lr": 1e-3 / e}
               for e in (1, 2, 3)]
    curves = plots.training_curves(history, tmp_path / "curves.png")
    grid = plots.kernel_grid(torch.randn(96, 3, 11, 11), tmp_path / "k.png", columns=12, scale=4)
    for path in (curves, grid):
        with Image.open(path) as image:
            assert image.format == "PNG"
    with Image.open(grid) as image:  # 8 rows x 12 columns of 11 px tiles and 1 px gaps, x4
        assert image.size == (4 * (12 * 12 + 1), 4 * (8 * 12 + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "k.png"]  # no temporaries
    with pytest.raises(ValueError, match="weight"):
        plots.kernel_grid(torch.randn(4, 1, 3, 3), tmp_path / "bad.png")
