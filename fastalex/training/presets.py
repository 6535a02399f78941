"""Training recipes: every default of ``python -m fastalex.train``, in one place.

The paper's recipe for ``--data``; quick ones for the built-in dataset, on a CPU and on a GPU.
The command line takes its defaults from here (so ``--help`` shows them) and a resumed run from
its checkpoint. Why each value is what it is: docs/training.md.
"""

from fastalex.training.system import usable_cpus

# The paper's network and the plumbing of a run: the same in every recipe.
COMMON = dict(
    model="alexnet",
    conv4=True,
    init="paper",
    init_bias=1.0,
    input_scale=1.0,
    impl="fastalex",
    activation="relu",
    pooling="overlapping",
    lrn=True,
    seed=0,
    amp="fp32",
    channels_last=False,
    ten_crop=False,
    cuda_graph=False,
    compile_mode="default",
    stats_images=10000,
    print_freq=10,
)

# The paper, section 5 (patience 5 is this project's reading of "stopped improving").
PAPER = dict(
    epochs=90,
    batch_size=128,
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    wd=5e-4,
    lr_schedule="plateau",
    lr_patience=5,
    lr_decays=3,
    warmup_epochs=0.0,
    image_size=256,
    crop=227,
    dropout=0.5,
    crop_flip=True,
    pca_std=0.1,
    per_channel_mean=False,
)

# The built-in "shapes" dataset as generated (fastalex.training.data.builtin).
BUILTIN_DATA = dict(image_size=128, train_per_class=600, val_per_class=100)

# The built-in dataset: the paper's SGD, with the three departures from its initialisation
# that let SGD learn at this scale (docs/training.md: why, and what each one buys).
_QUICK = dict(
    optimizer="sgd",
    momentum=0.9,
    wd=5e-4,
    init="he",
    init_bias=0.1,
    input_scale=1 / 64,
    lr_schedule="cosine",
    warmup_epochs=0.3,
    lr_patience=5,
    lr_decays=3,
    dropout=0.5,
    crop_flip=True,
    pca_std=0.1,
    per_channel_mean=False,
)
# The plain `python -m fastalex.train` on a 2-core CPU: under 5 minutes, top-1 error <= 50%.
BUILTIN_CPU = dict(_QUICK, epochs=7, batch_size=64, lr=0.01, image_size=76, crop=67, workers=0)
BUILTIN_CUDA = dict(_QUICK, epochs=30, batch_size=128, lr=0.01, image_size=112, crop=99)


def default_workers() -> int:
    """Data-loading processes beside a training process: one per other usable CPU, at most 8."""
    return max(0, min(8, usable_cpus() - 1))


def recipe(data, device_type: str) -> tuple[str, dict]:
    """The name of the recipe for a run on ``data`` (an ImageFolder directory, or None for the
    built-in dataset) on a ``device_type`` device, and the default of every flag it sets."""
    if data:
        name, preset = "paper", PAPER
    elif device_type == "cuda":
        name, preset = "builtin-cuda", BUILTIN_CUDA
    else:
        name, preset = "builtin-cpu", BUILTIN_CPU
    builtin = {f"builtin_{key}": value for key, value in BUILTIN_DATA.items()}
    return name, {**COMMON, "workers": default_workers(), **builtin, **preset}
