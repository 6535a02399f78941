"""The four-layer CNN of the paper's Figure 1 (ReLU against tanh on CIFAR-10).

Three 5x5 convolutions, each followed by its activation and a 3x3 stride-2 max-pool, then one
fully-connected layer to the classes: the layout of cuda-convnet's CIFAR-10 networks, which the
figure's experiment used. No regularisation of any kind (no dropout, no LRN), as the figure's
caption says. Two builds like :func:`fastalex.models.alexnet`: ``impl="fastalex"`` on
:mod:`fastalex.layers`, ``impl="torch"`` on plain :mod:`torch.nn`, with the same state_dict keys
(``features.conv1`` ... ``classifier.fc4``).
"""

import math
from collections import OrderedDict

import torch
from torch import nn

# (name, out_channels): every convolution is 5x5, stride 1, padding 2, then a 3x3/2 max-pool.
CONV_LAYERS = (("1", 32), ("2", 32), ("3", 64))
KERNEL, PADDING = 5, 2
POOL_KERNEL, POOL_STRIDE = 3, 2
ACTIVATIONS = ("relu", "tanh")
IMPLS = ("fastalex", "torch")
# The training pipeline feeds 0-255 pixels minus the mean image, a spread of a few tens of
# levels. The network divides its input by this constant first (no parameter), so that its
# initialisation puts both activations in their working range (a tanh fed pre-activations of
# tens would start saturated) and conv1's gradients are not 64x larger than the others'.
INPUT_SCALE = 1 / 64


def feature_size(image_size: int) -> int:
    """Side of the last pooled feature map for a square ``image_size`` input (3 at 32 px)."""
    side = image_size
    for _ in CONV_LAYERS:  # the convolutions keep the size, each pool roughly halves it
        side = (side - POOL_KERNEL) // POOL_STRIDE + 1
    return side


MIN_IMAGE_SIZE = next(s for s in range(1, 64) if feature_size(s) >= 1)  # 15


class ConvNet4(nn.Module):
    """input x :data:`INPUT_SCALE` -> ``features`` (conv1-conv3, each with its activation
    and max-pool) -> flatten -> ``classifier`` (fc4). Build it with :func:`convnet4`."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, config: dict):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.config = dict(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x * INPUT_SCALE), 1))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


def _check(num_classes, activation, image_size, impl):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if (isinstance(image_size, bool) or not isinstance(image_size, int)
            or image_size < MIN_IMAGE_SIZE):
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _conv_factory(activation: str, impl: str):
    """conv(i, cin, cout) -> named modules: the fused Conv2dReLU of fastalex for ReLU, else a
    convolution followed by its activation module."""
    if impl == "fastalex":
        from fastalex import layers as L  # lazily: the kernels load only when asked for

        conv_cls, pool_cls = L.Conv2d, L.MaxPool2d
    else:
        conv_cls, pool_cls = nn.Conv2d, nn.MaxPool2d

    def conv(i, cin, cout):
        if impl == "fastalex" and activation == "relu":
            return [(f"conv{i}", L.Conv2dReLU(cin, cout, KERNEL, 1, PADDING))]
        act = nn.ReLU(inplace=True) if activation == "relu" else nn.Tanh()
        return [(f"conv{i}", conv_cls(cin, cout, KERNEL, 1, PADDING)), (f"{activation}{i}", act)]

    return conv, pool_cls, (L.Linear if impl == "fastalex" else nn.Linear)


def init_convnet4_(model: nn.Module) -> nn.Module:
    """Each layer's weights N(0, gain^2 / fan_in) with torch's gain for the activation that
    follows it (``nn.init.calculate_gain``: sqrt(2) for ReLU, 5/3 for tanh, 1 for the last
    layer), biases 0. With the scaled input this keeps the pre-activations near the variance
    each activation works at (for tanh: unsaturated), so neither activation is handicapped by
    the scale it starts at."""
    gain = nn.init.calculate_gain(model.config["activation"])
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            g = 1.0 if name.endswith("fc4") else gain
            nn.init.normal_(module.weight, mean=0.0, std=g / math.sqrt(fan_in))
            nn.init.zeros_(module.bias)
    return model


def convnet4(num_classes: int = 10, *, activation: str = "relu", image_size: int = 32,
             impl: str = "fastalex") -> ConvNet4:
    """The paper's Figure 1 network: 3 x (5x5 conv, activation, 3x3/2 max-pool), fc.

    Args:
        num_classes: outputs of the fully-connected layer.
        activation: ``"relu"`` or ``"tanh"`` (the saturating unit the figure compares with).
        image_size: side of the square input (32 for CIFAR-10; at least 15).
        impl: ``"fastalex"`` (fastalex layers) or ``"torch"`` (plain torch.nn, same state_dict).
    """
    _check(num_classes, activation, image_size, impl)
    conv, pool, linear = _conv_factory(activation, impl)
    features, cin = [], 3
    for i, cout in CONV_LAYERS:
        features += conv(i, cin, cout)
        features.append((f"pool{i}", pool(POOL_KERNEL, POOL_STRIDE)))
        cin = cout
    side = feature_size(image_size)
    classifier = [("fc4", linear(cin * side * side, num_classes))]
    config = dict(num_classes=num_classes, activation=activation, image_size=image_size,
                  impl=impl)
    model = ConvNet4(nn.Sequential(OrderedDict(features)), nn.Sequential(OrderedDict(classifier)),
                     config)
    return init_convnet4_(model)
