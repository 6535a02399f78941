"""fastalex.training.figures: the first layer's towers and measures, fc7, the top-5 and the
nearest neighbours, and the PNGs' layout; ``evaluate --figures`` and the end of a training
run write them."""

import json
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fastalex
from fastalex.models import alexnet
from fastalex.training import builders, checkpoint, evaluate, figures, options, plots
from fastalex.training.data.stats import ImageStats
from train_helpers import TINY, evaluate_in_process, main_in_process, tiny_data  # noqa: F401

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def small_net(num_classes=7) -> nn.Module:
    """A stand-in with AlexNet's structure (features, then classifier ending in fc8), small
    enough to search many images quickly; weights large enough that images differ."""
    net = nn.Module()
    net.features = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 3, stride=2), relu1=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2)))
    net.classifier = nn.Sequential(OrderedDict(
        fc6=nn.Linear(32, 24), relu6=nn.ReLU(), drop6=nn.Dropout(0.5),
        fc7=nn.Linear(24, 16), relu7=nn.ReLU(), drop7=nn.Dropout(0.5),
        fc8=nn.Linear(16, num_classes)))
    net.forward = lambda x: net.classifier(torch.flatten(net.features(x), 1))
    return net.eval()


class ImageList(torch.utils.data.Dataset):
    """(image, label) pairs; ``None`` at ``unreadable`` (as SafeImageFolder gives)."""

    def __init__(self, images, labels, unreadable=()):
        self.images, self.labels, self.unreadable = images, labels, set(unreadable)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return None if i in self.unreadable else (self.images[i], int(self.labels[i]))


# --- conv1: towers, colour, roughness -----------------------------------------------------------

def test_the_towers_are_conv2s_two_halves_of_48():
    model = alexnet(10, image_size=67, impl="torch")
    weight, groups = figures.conv1_weight(model)
    assert groups == 2 and weight.shape == (96, 3, 11, 11)
    first, second = figures.towers(weight, groups)
    assert first.shape[0] == second.shape[0] == 48
    assert torch.equal(first, weight[:48]) and torch.equal(second, weight[48:])
    with pytest.raises(ValueError, match="towers"):
        figures.towers(torch.randn(95, 3, 11, 11))


def test_colour_share_is_zero_for_grey_and_one_for_colour_opponent_kernels():
    grey = torch.randn(48, 1, 11, 11).expand(48, 3, 11, 11) + 0.3  # R = G = B, any mean
    pattern = torch.randn(48, 1, 11, 11)
    opponent = torch.cat([pattern, -pattern, torch.zeros_like(pattern)], dim=1)  # red-green
    blue_yellow = torch.cat([pattern, pattern, -2 * pattern], dim=1)
    assert figures.colour_share(grey).abs().max() < 1e-6
    assert figures.colour_share(opponent).min() > 1 - 1e-6
    assert figures.colour_share(blue_yellow).min() > 1 - 1e-6
    noise = figures.colour_share(torch.randn(2000, 3, 11, 11))
    assert noise.mean().item() == pytest.approx(2 / 3, abs=0.01)
    # the paper's pattern: one tower colour-agnostic, the other colour-specific
    measures = figures.conv1_measures(torch.cat([grey, opponent]))
    assert measures["colour_tower1"] < 1e-4 and measures["colour_tower2"] > 0.999
    swapped = figures.conv1_measures(torch.cat([opponent, grey]))
    assert swapped["colour_tower1"] > 0.999 and swapped["colour_tower2"] < 1e-4
    assert set(measures) == {"colour_tower1", "colour_tower2", "roughness_tower1",
                             "roughness_tower2"}
    assert "conv1 colour share per tower" in figures.describe_measures(measures)


def test_roughness_tells_smooth_filters_from_per_pixel_noise():
    y, x = torch.meshgrid(torch.arange(11.0), torch.arange(11.0), indexing="ij")
    angles = torch.rand(48) * math.pi
    phases = torch.rand(48) * 2 * math.pi
    gratings = torch.cos(0.5 * (x * angles.cos()[:, None, None] + y * angles.sin()[:, None, None])
                         + phases[:, None, None])  # 12-pixel period: smooth
    smooth = gratings[:, None].expand(48, 3, 11, 11) * torch.rand(48, 3, 1, 1)
    noise = torch.randn(48, 3, 11, 11)
    checker = ((x + y) % 2 * 2 - 1).expand(48, 3, 11, 11) * torch.rand(48, 3, 1, 1)
    assert figures.roughness(smooth).max() < 0.2
    assert figures.roughness(noise).mean().item() == pytest.approx(1.0, abs=0.1)
    assert figures.roughness(checker).min() > 1.8
    # the paper's initialisation is per-pixel noise
    init = figures.conv1_measures(figures.conv1_weight(alexnet(10, image_size=67,
                                                               impl="torch"))[0])
    assert 0.85 < init["roughness_tower1"] < 1.15 and 0.6 < init["colour_tower2"] < 0.73


# --- fc7, top-5, neighbours -----------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["torch", "fastalex"])
def test_fc7_features_are_fc7_after_its_relu(impl):
    """The 4,096 values of the last hidden layer, as a hook on fc7's ReLU sees them in eval
    mode (fastalex fuses the ReLU into fc7: its output is the ReLU's)."""
    model = alexnet(10, image_size=67, impl=impl).eval()
    nn.init.normal_(model.classifier.fc7.bias, 0.0, 1.0)  # some below 0: the ReLU matters
    seen = []
    hooked = model.classifier.fc7 if impl == "fastalex" else model.classifier.relu7
    hooked.register_forward_hook(lambda module, inputs, output: seen.append(output.clone()))
    images = torch.randn(3, 3, 67, 67) * 50
    with fastalex.reference_ops():
        features = figures.fc7_features(model, images)
        model(images)
    assert features.shape == (3, 4096) and (features >= 0).all() and (features == 0).any()
    torch.testing.assert_close(features, seen[-1])


@pytest.mark.parametrize("device", DEVICES)
def test_top_k_are_the_five_most_probable(device):
    net = small_net(num_classes=9).to(device)
    images = torch.randn(6, 3, 16, 16, device=device)
    probs, labels = figures.top_k(net, images)
    assert probs.shape == labels.shape == (6, 5)
    expected = torch.softmax(net(images), dim=1)
    reference = torch.topk(expected, 5, dim=1)
    assert torch.equal(labels, reference.indices)
    torch.testing.assert_close(probs, reference.values)
    for row in range(6):  # every other class is less probable than the fifth
        others = [c for c in range(9) if c not in labels[row].tolist()]
        assert (expected[row, others] <= probs[row, -1]).all()
    probs, labels = figures.top_k(small_net(num_classes=3).to(device), images)
    assert labels.shape == (6, 3)  # fewer than five classes: all of them


@pytest.mark.parametrize("device", DEVICES)
def test_the_neighbours_are_the_nearest_in_fc7(device):
    net = small_net().to(device)
    images = torch.randn(37, 3, 16, 16)
    data = ImageList(images, torch.randint(0, 7, (37,)), unreadable={4})
    queries = torch.randn(5, 3, 16, 16)
    distances, indices = figures.nearest_neighbours(net, queries, data, k=6, batch_size=8,
                                                    device=device)
    q = figures.fc7_features(net, queries.to(device))
    f = figures.fc7_features(net, images.to(device))
    f[4] = float("inf")  # the unreadable image is never a neighbour
    full = torch.cdist(q, f)
    expected = full.topk(6, dim=1, largest=False)
    assert torch.equal(indices, expected.indices.cpu())
    torch.testing.assert_close(distances, expected.values.cpu(), rtol=1e-4, atol=1e-4)
    assert (distances[:, 1:] >= distances[:, :-1]).all()  # nearest first

    # With a cap, a fixed sample of that many images is searched, exhaustively.
    sample = figures.searched_indices(37, 10)
    assert len(sample) == 10 and sample == sorted(set(sample))
    assert sample == figures.searched_indices(37, 10)  # the same sample every time
    _, capped = figures.nearest_neighbours(net, queries, data, k=3, max_images=10,
                                           batch_size=4, device=device)
    searched = [i for i in sample if i != 4]
    expected = full[:, searched].topk(3, dim=1, largest=False).indices.cpu()
    assert torch.equal(capped, torch.tensor(searched)[expected])
    with pytest.raises(ValueError, match="max_images"):
        figures.searched_indices(37, 0)


def test_unnormalise_adds_the_mean_back():
    raw = torch.randint(0, 256, (2, 3, 76, 76)).float()
    mean_image = torch.rand(3, 76, 76) * 255
    stats = ImageStats(mean_image, mean_image.mean((1, 2)), torch.ones(3), torch.eye(3), 10, 76)
    crop = raw[..., 4:71, 4:71]  # the 67 px centre crop of a 76 px image, as CenterCrop takes
    seen = crop - mean_image[:, 4:71, 4:71]
    torch.testing.assert_close(figures.unnormalise(seen, stats), crop / 255)
    per_channel = crop - stats.mean_rgb.view(3, 1, 1)
    torch.testing.assert_close(figures.unnormalise(per_channel, stats, per_channel_mean=True),
                               crop / 255)
    assert figures.spread_indices(100, 5) == [0, 25, 50, 74, 99]
    assert figures.spread_indices(3, 5) == [0, 1, 2]


# --- the PNGs ------------------------------------------------------------------------------------

def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_kernel_grid_sets_the_towers_apart(tmp_path):
    weight = torch.randn(96, 3, 11, 11)
    path = plots.kernel_grid(weight, tmp_path / "k.png", groups=2, scale=2)
    # two towers of 4 rows x 12 columns of 11 px tiles, 1 px apart, and one tile's gap
    assert png_size(path) == (2 * (12 * 12 + 1), 2 * (8 * 12 + 1 + 11))
    with Image.open(path) as image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    gap_rows = pixels[2 * (1 + 4 * 12):2 * (1 + 4 * 12 + 11)]
    assert (gap_rows == 255).all()
    with pytest.raises(ValueError, match="groups"):
        plots.kernel_grid(torch.randn(95, 3, 11, 11), tmp_path / "bad.png", groups=2)


def test_neighbours_layout_puts_each_query_first_then_its_neighbours(tmp_path):
    queries = torch.rand(5, 3, 20, 20)
    neighbours = torch.rand(5, 6, 3, 20, 20)
    path = figures.neighbours_figure(queries, neighbours, tmp_path / "n.png", scale=2)
    # 7 columns of 20 px, 2 px apart, and a 5 px gap after the query column
    assert png_size(path) == (2 * (2 + 7 * 22 + 5), 2 * (2 + 5 * 22))
    image = plots.montage(torch.cat([queries[:, None], neighbours], dim=1), pad=2,
                          col_gap_after=[0], gap=5)
    assert torch.equal(image[:, 2 + 22 * 3:2 + 22 * 3 + 20, 2:22], queries[3])
    x = 2 + 22 * 2 + 5  # the second neighbour's column
    assert torch.equal(image[:, 2 + 22 * 4:2 + 22 * 4 + 20, x:x + 20], neighbours[4, 1])


def test_top5_figure_has_a_cell_per_image(tmp_path):
    pictures = torch.rand(8, 3, 20, 20)
    probs, labels = torch.rand(8, 5).sort(dim=1, descending=True)[0], torch.randint(0, 10, (8, 5))
    classes = [f"class {i}" for i in range(10)]
    path = figures.top5_figure(pictures, probs, labels, torch.randint(0, 10, (8,)), classes,
                               tmp_path / "t.png", columns=4)
    assert png_size(path) == (4 * 260, 2 * 400)  # 4 columns x 2 rows of (picture, bars)
    path = figures.top5_figure(pictures[:3], probs[:3], labels[:3], [0, 1, 2], classes,
                               tmp_path / "t3.png", columns=4)
    assert png_size(path) == (3 * 260, 400)


def test_contrast_normalisation_ignores_scale_and_keeps_zero_grey():
    weight = torch.randn(4, 3, 11, 11)
    tiles = plots.contrast_normalise(weight)
    assert tiles.min() >= 0 and tiles.max() <= 1
    assert torch.allclose(plots.contrast_normalise(weight * 1e-3), tiles, atol=1e-6)
    centred = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.equal(tiles > 0.5, centred > 0)
    assert torch.allclose((tiles - 0.5).abs().amax(dim=(1, 2, 3)), torch.full((4,), 0.5))


# --- end to end -----------------------------------------------------------------------------------

def test_training_and_evaluate_write_the_figures(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--output-dir", out]) == 0
    printed = capsys.readouterr().out
    assert "conv1 colour share per tower" in printed
    assert "learned since initialisation: conv1 colour share per tower" in printed
    every = (*figures.FILES, figures.CONV1_LEARNED)  # a checkpoint keeps conv1's start
    for name in every:
        assert png_size(out / name) and str(out / name) in printed

    elsewhere = tmp_path / "figures"
    assert evaluate_in_process([out / "model_best.pt", "--figures", "--output-dir", elsewhere,
                                "--crops", "center", "-j", "0", "--no-progress", "--device",
                                "cpu", "--json", tmp_path / "eval.json"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["figures"] == [str(elsewhere / name) for name in every]
    measures = {"colour_tower1", "colour_tower2", "roughness_tower1", "roughness_tower2"}
    assert set(result["conv1"]) == measures | {"learned"}
    assert set(result["conv1"]["learned"]) == measures
    assert f"{result['conv1']['colour_tower1']:.3f}" in printed
    assert png_size(elsewhere / figures.CONV1_KERNELS) == png_size(out / figures.CONV1_KERNELS)
    # tiny data: 20 validation images, 8 of them with their bars; 5 queries, 6 neighbours
    assert png_size(elsewhere / figures.TOP5) == (4 * 260, 2 * 400)
    assert png_size(elsewhere / figures.NEIGHBOURS) == (2 * (2 + 7 * 69 + 16), 2 * (2 + 5 * 69))

    # next to the checkpoint by default
    for name in every:
        (out / name).unlink()
    assert evaluate_in_process([out / "model_best.pt", "--figures", "--crops", "center",
                                "-j", "0", "--no-progress", "--device", "cpu"]) == 0
    assert all((out / name).is_file() for name in every)


def test_learned_is_the_change_since_the_run_s_initial_conv1(tiny_data, tmp_path):
    """The checkpoint keeps the initial conv1 a fresh model with the run's seed would have,
    and the learned change is the final weight minus it."""
    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--output-dir", out,
                            "--seed", "5"]) == 0
    state = checkpoint.load(out / "checkpoint.pt", map_location="cpu")
    args = options.resolve(["--data", str(tiny_data), *map(str, TINY), "--seed", "5"])
    torch.manual_seed(5)
    fresh = builders.build_model(args, len(state["classes"]), torch.device("cpu"))
    torch.testing.assert_close(state["conv1_init"], fresh.features.conv1.weight.detach(),
                               rtol=0, atol=0)
    final = state["model"]["features.conv1.weight"]
    change = figures.learned(final, state["conv1_init"])
    torch.testing.assert_close(change, final - state["conv1_init"], rtol=0, atol=0)
    assert change.abs().max() > 0  # one epoch of SGD moved it
    with pytest.raises(ValueError, match="conv1_init: shape"):
        figures.learned(final, state["conv1_init"][:10])


def test_a_figure_error_is_one_warning_and_the_run_succeeds(tiny_data, tmp_path, capsys,
                                                            monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no room\non the disk")

    monkeypatch.setattr(figures, "top5_figure", broken)
    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--output-dir", out]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "warning" in line] == [
        "warning: figures not written: RuntimeError: no room on the disk"]
    assert (out / "checkpoint.pt").is_file() and (out / "curves.png").is_file()


def test_figure_options(tmp_path, capsys):
    assert evaluate_in_process([tmp_path / "x.pt", "--figures", "--neighbour-images", "0"]) == 2
    assert "--neighbour-images must be >= 1, got 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert evaluate_in_process([tmp_path / "x.pt", "--figures", "--output-dir",
                                tmp_path / "file"]) == 2
    assert "--output-dir" in capsys.readouterr().err
    # the help states the cap the search uses by default
    help_text = " ".join(evaluate.build_parser().format_help().split())
    assert f"(default: {figures.NEIGHBOUR_IMAGES})" in help_text


def test_figures_need_a_training_split(tiny_data, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    assert main_in_process(["--data", tiny_data, *TINY, "--epochs", "1", "--output-dir", out]) == 0
    only_val = tmp_path / "only_val"
    shutil.copytree(tiny_data / "val", only_val / "val")
    capsys.readouterr()
    assert evaluate_in_process([out / "model_best.pt", "--figures", "--data", only_val,
                                "-j", "0", "--no-progress", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert "--figures: " in captured.err and "no train/ split" in captured.err
    assert "crop: top-1" not in captured.out  # refused before any scoring


@pytest.mark.parametrize("warn", [True, False])
def test_unreadable_training_images_are_skipped(tiny_data, tmp_path, warn):
    """An unreadable training image is skipped: evaluate names it, the end of a run
    (whose epochs already named it) does not name it again."""
    import shutil
    import warnings

    from fastalex.training.data import datasets

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    bad = sorted((data / "train").rglob("*.jpg"))[3]
    bad.write_bytes(b"not an image")
    args = type("Args", (), {"image_size": 70, "crop": 67, "per_channel_mean": False})()
    model = alexnet(10, image_size=67, impl="torch")
    mean = torch.rand(3, 70, 70) * 255
    stats = ImageStats(mean, mean.mean((1, 2)), torch.ones(3), torch.eye(3), 40, 70)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = figures.write_figures(model, data, tmp_path / "out", image_stats=stats, args=args,
                                      classes=sorted(p.name for p in (data / "val").iterdir()),
                                      batch_size=16, warn_unreadable=warn)
    named = [w for w in caught if issubclass(w.category, datasets.CorruptImageWarning)]
    assert bool(named) == warn and all(str(bad) in str(w.message) for w in named)
    assert all(p.is_file() for p in paths)


def test_figures_of_a_run_on_prepared_data(tiny_data, tmp_path, capsys):
    """Prepared data (python -m fastalex.prepare): the run's figures and evaluate's read its
    shards."""
    from fastalex.training import prepare

    data = tmp_path / "prepared"
    prepare.prepare(tiny_data, data, workers=0, size=70, shard_size=8, progress=False)
    out = tmp_path / "run"
    assert main_in_process(["--data", data, *TINY, "--epochs", "1", "--output-dir", out]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    assert all(png_size(out / name) for name in figures.FILES)
    for name in figures.FILES:
        (out / name).unlink()
    assert evaluate_in_process([out / "model_best.pt", "--figures", "--crops", "center",
                                "-j", "0", "--no-progress", "--device", "cpu"]) == 0
    assert "centre crop: top-1 error" in capsys.readouterr().out
    assert all(png_size(out / name) for name in figures.FILES)
