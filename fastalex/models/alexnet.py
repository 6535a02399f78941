"""The 2012 AlexNet (Krizhevsky, Sutskever, Hinton), exactly as the paper describes it.

Two builds of one network: ``impl="fastalex"`` runs on :mod:`fastalex.layers` (fused
Conv+bias+ReLU, LRN, max-pool, Linear+bias+ReLU+dropout); ``impl="torch"`` is the same network
from plain :mod:`torch.nn` layers. Both name their parameterised submodules alike
(``features.conv1`` ... ``classifier.fc8``), so their state_dicts have the same keys and weights
move between them for A/B comparisons.
"""

from collections import OrderedDict

import torch
from torch import nn

# The paper's LRN constants. alpha is 1e-4 in the paper's formula, which sums the squares without
# dividing by n; torch's LocalResponseNorm divides by size, so the same layer is alpha = n * 1e-4.
LRN_SIZE = 5
LRN_ALPHA = 5e-4
LRN_BETA = 0.75
LRN_K = 2.0

# (name, out_channels, kernel, stride, padding, groups, LRN after it, max-pool after it).
# groups=2 reproduces the paper's two-GPU connectivity: conv2, conv4 and conv5 only see the
# kernel maps on their own GPU; conv3 and the FC layers cross over.
CONV_LAYERS = (
    ("1", 96, 11, 4, 0, 1, True, True),
    ("2", 256, 5, 1, 2, 2, True, True),
    ("3", 384, 3, 1, 1, 1, False, False),
    ("4", 384, 3, 1, 1, 2, False, False),
    ("5", 256, 3, 1, 1, 2, False, True),
)
HIDDEN = 4096

# Layers whose bias starts at 1 (the paper: "accelerates the early stages of learning by
# providing the ReLUs with positive inputs"); every other bias starts at 0.
BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")
INIT_STD = 0.01
# "paper": every weight N(0, 0.01). "he": N(0, 2 / fan_in) (He et al., 2015), which keeps a
# ReLU network's activations at the scale of its input through every layer.
INITS = ("paper", "he")

POOLING = {"overlapping": (3, 2), "non-overlapping": (2, 2)}
ACTIVATIONS = ("relu", "tanh")
IMPLS = ("fastalex", "torch")
MIN_IMAGE_SIZE = 67  # the smallest input whose last pooled feature map is still 1x1


def feature_size(image_size: int, pooling: str = "overlapping") -> int:
    """Side of the last pooled feature map for a square ``image_size`` input (6 at 227 px)."""
    kernel, stride = POOLING[pooling]
    side = (image_size - 11) // 4 + 1  # conv1, no padding
    for _ in range(3):  # pool1, pool2, pool5; conv2-5 keep the size
        side = (side - kernel) // stride + 1
    return side


class AlexNet(nn.Module):
    """``features`` (conv1-conv5 with their ReLU/LRN/pool) -> flatten -> ``classifier``
    (fc6, fc7, fc8). No adaptive pooling: the paper has none, so fc6's input size follows from
    ``image_size``. Build it with :func:`alexnet`."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, config: dict):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.config = dict(config)
        self.input_scale = float(config.get("input_scale", 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:
            x = x * self.input_scale
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TypeError(f"{name} must be a number, got {value!r}")


def _check(num_classes, dropout, activation, pooling, lrn, image_size, impl, conv4, init,
           positive_bias, input_scale):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if pooling not in POOLING:
        raise ValueError(f"pooling must be one of {tuple(POOLING)}, got {pooling!r}")
    if not isinstance(lrn, bool):
        raise TypeError(f"lrn must be a bool, got {lrn!r}")
    if not isinstance(conv4, bool):
        raise TypeError(f"conv4 must be a bool, got {conv4!r}")
    if (isinstance(image_size, bool) or not isinstance(image_size, int)
            or image_size < MIN_IMAGE_SIZE):
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    _number("positive_bias", positive_bias)
    _number("input_scale", input_scale)
    if not input_scale > 0:
        raise ValueError(f"input_scale must be > 0, got {input_scale!r}")


def _fastalex_layers(activation: str, dropout: float):
    """Factories for the fastalex build: fused ReLU layers, or plain conv/linear + nn.Tanh."""
    from fastalex import layers as L  # lazily: the kernels load only when this build is asked for

    def conv(i, cin, cout, k, s, p, g):
        if activation == "relu":
            return [(f"conv{i}", L.Conv2dReLU(cin, cout, k, s, p, groups=g))]
        return [(f"conv{i}", L.Conv2d(cin, cout, k, s, p, groups=g)), (f"tanh{i}", nn.Tanh())]

    def hidden(i, fin, fout):
        if activation == "relu":  # Linear + bias + ReLU + dropout in one kernel
            return [(f"fc{i}", L.LinearReLU(fin, fout, p=dropout))]
        return [(f"fc{i}", L.Linear(fin, fout)), (f"tanh{i}", nn.Tanh()),
                (f"drop{i}", L.Dropout(dropout))]

    return conv, hidden, L.LRN, L.MaxPool2d, L.Linear


def _torch_layers(activation: str, dropout: float):
    """Factories for the reference build: the same network from plain torch.nn modules."""
    act = nn.ReLU if activation == "relu" else nn.Tanh

    def conv(i, cin, cout, k, s, p, g):
        return [(f"conv{i}", nn.Conv2d(cin, cout, k, s, p, groups=g)),
                (f"{activation}{i}", act(inplace=True) if act is nn.ReLU else act())]

    def hidden(i, fin, fout):
        return [(f"fc{i}", nn.Linear(fin, fout)),
                (f"{activation}{i}", act(inplace=True) if act is nn.ReLU else act()),
                (f"drop{i}", nn.Dropout(dropout))]

    return conv, hidden, nn.LocalResponseNorm, nn.MaxPool2d, nn.Linear


def initialise_(model: nn.Module, *, init: str = "paper",
                positive_bias: float = 1.0) -> nn.Module:
    """The paper's initialisation, in place: every weight N(0, 0.01); biases 1 in conv2, conv4,
    conv5, fc6 and fc7, 0 elsewhere. ``init="he"`` draws the weights from N(0, 2 / fan_in)
    instead; ``positive_bias`` replaces the paper's 1 (Caffe's reference AlexNet uses 0.1)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            std = INIT_STD if init == "paper" else (2.0 / fan_in) ** 0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            positive = name.split(".")[-1] in BIAS_ONE
            nn.init.constant_(module.bias, float(positive_bias) if positive else 0.0)
    return model


def alexnet(num_classes: int = 1000, dropout: float = 0.5, *, activation: str = "relu",
            pooling: str = "overlapping", lrn: bool = True, image_size: int = 227,
            impl: str = "fastalex", conv4: bool = True, init: str = "paper",
            positive_bias: float = 1.0, input_scale: float = 1.0) -> AlexNet:
    """The paper's AlexNet: 60,965,224 parameters at 227 px and 1000 classes.

    Args:
        num_classes: outputs of fc8.
        dropout: dropout probability after the ReLU of fc6 and fc7 (0 turns it off).
        activation: ``"relu"`` (the paper) or ``"tanh"`` (its saturating baseline).
        pooling: ``"overlapping"`` 3x3 windows with stride 2 (the paper) or
            ``"non-overlapping"`` 2x2/2 (the ablation the paper compares with).
        lrn: local response normalisation after conv1's and conv2's ReLU (paper constants).
        image_size: side of the square input; 227 in the paper, down to 67 for quick runs
            (fc6's input is 256 x s x s, s = :func:`feature_size`).
        impl: ``"fastalex"`` (fused kernels) or ``"torch"`` (plain torch.nn, same state_dict).
        conv4: keep conv4 (the paper). ``False`` is the paper's depth ablation, a network
            without one middle convolutional layer: conv3's 384 maps feed conv5 directly.
        init: ``"paper"`` weights N(0, 0.01), or ``"he"`` N(0, 2 / fan_in).
        positive_bias: the starting bias of conv2, conv4, conv5, fc6 and fc7 (paper: 1).
        input_scale: the input is multiplied by it first (paper: 1, raw 0-255 values minus the
            mean; 1/64 brings them to about unit variance, the scale ``init="he"`` assumes).
    """
    _check(num_classes, dropout, activation, pooling, lrn, image_size, impl, conv4, init,
           positive_bias, input_scale)
    dropout = float(dropout)
    build = _fastalex_layers if impl == "fastalex" else _torch_layers
    conv, hidden, lrn_layer, pool_layer, linear = build(activation, dropout)
    pool_kernel, pool_stride = POOLING[pooling]

    features, cin = [], 3
    for i, cout, k, s, p, g, has_lrn, has_pool in CONV_LAYERS:
        if i == "4" and not conv4:
            continue
        features += conv(i, cin, cout, k, s, p, g)
        if has_lrn and lrn:
            features.append((f"norm{i}", lrn_layer(LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K)))
        if has_pool:
            features.append((f"pool{i}", pool_layer(pool_kernel, pool_stride)))
        cin = cout

    side = feature_size(image_size, pooling)
    classifier = hidden("6", cin * side * side, HIDDEN) + hidden("7", HIDDEN, HIDDEN)
    classifier.append(("fc8", linear(HIDDEN, num_classes)))

    config = dict(num_classes=num_classes, dropout=dropout, activation=activation,
                  pooling=pooling, lrn=lrn, image_size=image_size, impl=impl, conv4=conv4,
                  init=init, positive_bias=float(positive_bias), input_scale=float(input_scale))
    model = AlexNet(nn.Sequential(OrderedDict(features)), nn.Sequential(OrderedDict(classifier)),
                    config)
    return initialise_(model, init=init, positive_bias=positive_bias)
