"""fastalex.training.presets: each recipe sets every flag's default, and passes the CLI's checks."""

import argparse

import pytest

from fastalex.training import options, presets

# Flags without a recipe value: a path or choice of this command (None, or set by
# options.resolve from the device and data), and on/off switches that argparse starts off.
NOT_IN_RECIPES = {"data", "resume", "stop_after", "output_dir", "device", "gpu_decode",
                  "compile", "evaluate", "no_progress"}


def _recipe_args(data, device_type) -> argparse.Namespace:
    _, defaults = presets.recipe(data, device_type)
    flags = vars(options.build_parser().parse_args([]))
    return argparse.Namespace(**{**flags, **defaults, "data": data, "device": device_type})


@pytest.mark.parametrize("data,device,name", [(None, "cpu", "builtin-cpu"),
                                              (None, "cuda", "builtin-cuda"),
                                              ("/data/imagenet", "cuda", "paper"),
                                              ("/data/imagenet", "cpu", "paper")])
def test_every_flag_has_a_default(data, device, name):
    got, defaults = presets.recipe(data, device)
    assert got == name
    dests = set(vars(options.build_parser().parse_args([])))
    assert set(defaults) == dests - NOT_IN_RECIPES


def test_builtin_preset_is_sane():
    """The no-argument command's recipe, for each device type, passes the CLI's own checks."""
    for device in ("cpu", "cuda"):
        args = _recipe_args(None, device)
        options.check(args)
        assert args.crop >= 67 and args.crop <= args.image_size
        assert args.image_size <= args.builtin_image_size
    options.check(_recipe_args("/data/imagenet", "cuda"))


def test_the_paper_s_optimiser_everywhere_and_its_initialisation_with_data():
    """Every recipe trains with the paper's SGD (momentum 0.9, weight decay 5e-4, lr 0.01);
    only the built-in data's departs from the paper's initialisation."""
    for recipe in (presets.PAPER, presets.BUILTIN_CPU, presets.BUILTIN_CUDA):
        assert (recipe["optimizer"], recipe["momentum"], recipe["wd"], recipe["lr"]) == (
            "sgd", 0.9, 5e-4, 0.01)
    _, paper = presets.recipe("/data/imagenet", "cuda")
    assert (paper["init"], paper["init_bias"], paper["input_scale"]) == ("paper", 1.0, 1.0)
    _, builtin = presets.recipe(None, "cpu")
    assert (builtin["init"], builtin["init_bias"], builtin["input_scale"]) == ("he", 0.1, 1 / 64)


def test_default_workers(monkeypatch):
    for cpus, workers in ((1, 0), (2, 1), (4, 3), (64, 8)):
        monkeypatch.setattr(presets, "usable_cpus", lambda cpus=cpus: cpus)
        assert presets.default_workers() == workers
    # The CPU preset trains on every core: no loader process competes with it.
    assert presets.recipe(None, "cpu")[1]["workers"] == 0
    assert presets.recipe(None, "cuda")[1]["workers"] == presets.default_workers()
