"""The paper's claims, as data: what the paper says, the arms that test it, what is measured.

An arm is a set of overrides of :func:`fastalex.training.options.resolve` on top of the study's
base run (the built-in CPU recipe for AlexNet, :data:`CONVNET4_BASE` for the Figure 1 net): only
the one factor a claim is about changes between its arms. A measure compares one arm with a
reference arm seed by seed (same seed, same data, same budget), as a difference or a ratio of a
metric of :mod:`fastalex.training.study.measures`, oriented so that the paper's claim is an
effect above the null value (0 for a difference, 1 for a ratio).
"""

from dataclasses import dataclass, field

BASELINE = "baseline"


@dataclass(frozen=True)
class Arm:
    """One configuration of a claim. ``grid`` maps a flag to the values searched at the first
    seed; the value whose run scores best on ``select`` (a metric, lower is better) trains the
    other seeds."""

    name: str
    overrides: dict = field(default_factory=dict)
    model: str = "alexnet"
    grid: dict = field(default_factory=dict)
    select: str = ""


@dataclass(frozen=True)
class Measure:
    """``metric(arm) - metric(reference)`` per seed; ``kind="ratio"``: ``/``; ``"value"``:
    ``metric(arm)`` alone (a metric that is already a comparison)."""

    label: str
    paper: str  # the paper's figure or words
    metric: str
    arm: str
    reference: str
    kind: str = "difference"  # or "ratio"
    unit: str = " points"
    finding: bool = False  # not a claim of the paper: the verdict says whether the change helps

    @property
    def null(self) -> float:
        return 1.0 if self.kind == "ratio" else 0.0


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    says: str  # what the paper says, and where
    arms: tuple
    measures: tuple
    plot: str = "val_top1_error"  # the metrics.jsonl column its figure shows against epochs


# The Figure 1 experiment: no regularisation of any kind, no augmentation, 32 px inputs, SGD
# with momentum at a constant learning rate (searched per activation).
CONVNET4_BASE = dict(model="convnet4", builtin_image_size=32, image_size=32, crop=32,
                     crop_flip=False, pca_std=0.0, dropout=0.0, optimizer="sgd", momentum=0.9,
                     wd=0.0, lr_schedule="constant", batch_size=64)
CONVNET4_LRS = (0.001, 0.003, 0.01, 0.03)
TRAIN_ERROR_THRESHOLD = 0.25

_baseline = Arm(BASELINE)


def _convnet4_arm(activation: str) -> Arm:
    return Arm(f"convnet4-{activation}", {"activation": activation}, model="convnet4",
               grid={"lr": CONVNET4_LRS}, select="steps_to_25")


CLAIMS = (
    Claim(
        "relu-vs-tanh", "ReLU trains faster than tanh",
        "Section 3.1, Figure 1: a four-layer CNN reaches 25% training error on CIFAR-10 six "
        "times faster with ReLUs than with tanh units, each at its fastest learning rate.",
        (_convnet4_arm("relu"), _convnet4_arm("tanh")),
        (Measure("steps to 25% training error, tanh / ReLU", "6x", "steps_to_25",
                 "convnet4-tanh", "convnet4-relu", kind="ratio", unit="x"),
         Measure("training top-1 error at the end of the budget, tanh minus ReLU",
                 "lower with ReLU (> 0; Figure 1)", "train_top1", "convnet4-tanh",
                 "convnet4-relu")),
        plot="train_top1_error"),
    Claim(
        "overlapping-pooling", "Overlapping pooling helps",
        "Section 3.4: 3x3 pools with stride 2 instead of 2x2 with stride 2 lower the top-1 "
        "error by 0.4 points (top-5 by 0.3).",
        (_baseline, Arm("pool-2x2", {"pooling": "non-overlapping"})),
        (Measure("val top-1 error, 2x2/2 pools minus 3x3/2", "+0.4 points", "val_top1",
                 "pool-2x2", BASELINE),)),
    Claim(
        "lrn", "Local response normalisation helps",
        "Section 3.3: response normalisation lowers the top-1 error by 1.4 points (top-5 by "
        "1.2).",
        (_baseline, Arm("no-lrn", {"lrn": False})),
        (Measure("val top-1 error, without LRN minus with", "+1.4 points", "val_top1",
                 "no-lrn", BASELINE),)),
    Claim(
        "dropout", "Dropout prevents overfitting",
        "Section 4.2: without dropout the network overfits substantially; dropout roughly "
        "doubles the iterations needed to converge.",
        (_baseline, Arm("no-dropout", {"dropout": 0.0})),
        (Measure("val minus train top-1 error (the gap), without dropout minus with",
                 "substantial overfitting (> 0)", "gap", "no-dropout", BASELINE),
         Measure("epochs to converge, with dropout / without", "about 2x",
                 "epochs_to_converge", BASELINE, "no-dropout", kind="ratio", unit="x")),
        plot="gap"),
    Claim(
        "depth", "Depth matters",
        "Section 7: removing any middle convolutional layer costs about 2 points of top-1 "
        "error.",
        (_baseline, Arm("no-conv4", {"conv4": False})),
        (Measure("val top-1 error, without conv4 minus with", "about +2 points", "val_top1",
                 "no-conv4", BASELINE),)),
    Claim(
        "augmentation", "Data augmentation reduces overfitting",
        "Section 4.1: without the random crops and flips the network overfits substantially; "
        "the PCA lighting lowers the top-1 error by over 1 point.",
        (_baseline, Arm("no-crop-flip", {"crop_flip": False}), Arm("no-pca", {"pca_std": 0.0})),
        (Measure("val minus train top-1 error (the gap), centre crops minus crops and flips",
                 "substantial overfitting (> 0)", "gap", "no-crop-flip", BASELINE),
         Measure("val top-1 error, without PCA lighting minus with", "over +1 point",
                 "val_top1", "no-pca", BASELINE)),
        plot="gap"),
    Claim(
        "sgd-init", "The paper's initialisation with SGD at this scale",
        "Section 5: weights N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6 and fc7, raw "
        "0-255 inputs minus the mean, SGD at lr 0.01. The baseline departs from it three "
        "times (He et al.'s N(0, 2/fan_in) weights, biases 0.1, inputs times 1/64); each arm "
        "undoes one departure, the last all three. Not a claim of the paper: what each "
        "departure buys.",
        (_baseline,
         Arm("paper-weights", {"init": "paper"}),
         Arm("paper-biases", {"init_bias": 1.0}),
         Arm("raw-input", {"input_scale": 1.0}),
         Arm("paper-init", {"init": "paper", "init_bias": 1.0, "input_scale": 1.0})),
        (Measure("val top-1 error, N(0, 0.01) weights minus He's", "(not in the paper)",
                 "val_top1", "paper-weights", BASELINE, finding=True),
         Measure("val top-1 error, biases 1 minus 0.1", "(not in the paper)", "val_top1",
                 "paper-biases", BASELINE, finding=True),
         Measure("val top-1 error, raw 0-255 input minus times 1/64", "(not in the paper)",
                 "val_top1", "raw-input", BASELINE, finding=True),
         Measure("val top-1 error, the paper's initialisation minus the baseline's",
                 "(not in the paper)", "val_top1", "paper-init", BASELINE, finding=True))),
    Claim(
        "ten-crop", "10-crop testing helps",
        "Section 4.1: at test time the network averages its softmax over ten 227 px patches "
        "(the corners and centre and their reflections); the paper reports the resulting "
        "errors, not the gain over one centre crop.",
        (_baseline,),
        (Measure("val top-1 error, centre crop minus 10-crop (same checkpoints)",
                 "lower with 10 crops (> 0)", "ten_crop_gain", BASELINE, BASELINE,
                 kind="value"),)),
)

NAMES = tuple(c.name for c in CLAIMS)


def select(names) -> tuple:
    """The claims named in ``names`` (all when empty), in the table's order; ValueError with
    the valid names for an unknown one."""
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown claim {unknown[0]!r} (valid: {', '.join(NAMES)})")
    return tuple(c for c in CLAIMS if not names or c.name in names)


def arms_of(claims) -> tuple:
    """The distinct arms the claims need, in first-use order (the baseline is shared)."""
    seen = {}
    for claim in claims:
        for arm in claim.arms:
            seen.setdefault(arm.name, arm)
    return tuple(seen.values())
