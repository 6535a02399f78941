"""The four-layer CNN of the paper's Figure 1: structure, the two builds agreeing,
initialisation, argument checks."""

import math

import pytest
import torch
from torch import nn

import fastalex
from fastalex import layers as L
from fastalex.models import ConvNet4, convnet4
from fastalex.models.convnet4 import INPUT_SCALE, MIN_IMAGE_SIZE, feature_size


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_structure_and_shapes(activation):
    model = convnet4(10, activation=activation, impl="torch")
    assert isinstance(model, ConvNet4)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 32, (5, 5), (2, 2)), (32, 32, (5, 5), (2, 2)), (32, 64, (5, 5), (2, 2))]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3
    act = nn.ReLU if activation == "relu" else nn.Tanh
    assert sum(isinstance(m, act) for m in model.features) == 3
    # No regularisation of any kind: no dropout, no normalisation layer.
    assert not any(isinstance(m, (nn.Dropout, nn.LocalResponseNorm)) for m in model.modules())
    assert model.classifier.fc4.in_features == 64 * 3 * 3  # 32 -> 15 -> 7 -> 3
    x = torch.randn(5, 3, 32, 32) * 60
    assert model(x).shape == (5, 10)


def test_feature_size_and_minimum():
    assert feature_size(32) == 3
    assert feature_size(MIN_IMAGE_SIZE) == 1 and feature_size(MIN_IMAGE_SIZE - 1) < 1
    model = convnet4(7, image_size=MIN_IMAGE_SIZE, impl="torch")
    assert model(torch.randn(2, 3, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE)).shape == (2, 7)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_the_two_builds_agree(activation):
    torch.manual_seed(0)
    ref = convnet4(10, activation=activation, impl="torch")
    ours = convnet4(10, activation=activation, impl="fastalex")
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    if activation == "relu":
        assert isinstance(ours.features.conv1, L.Conv2dReLU)
    assert isinstance(ours.features.pool1, L.MaxPool2d)
    assert isinstance(ours.classifier.fc4, L.Linear)
    x = torch.randn(3, 3, 32, 32) * 60
    with fastalex.reference_ops():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation,gain", [("relu", math.sqrt(2)), ("tanh", 5 / 3)])
def test_initialisation_keeps_pre_activations_near_unit_variance(activation, gain):
    torch.manual_seed(1)
    model = convnet4(10, activation=activation, impl="torch")
    for module, g in ((model.features.conv1, gain), (model.features.conv2, gain),
                      (model.features.conv3, gain), (model.classifier.fc4, 1.0)):
        fan_in = module.weight[0].numel()
        assert module.weight.std().item() == pytest.approx(g / math.sqrt(fan_in), rel=0.15)
        assert torch.count_nonzero(module.bias) == 0
    # Inputs as the pipeline feeds them (0-255 minus the mean, spread ~ 1 / INPUT_SCALE):
    # conv1's pre-activations are near unit variance, so tanh does not start saturated.
    x = torch.randn(16, 3, 32, 32) / INPUT_SCALE
    pre = model.features.conv1(x * INPUT_SCALE)
    assert 0.5 * gain < pre.std().item() < 2.0 * gain


@pytest.mark.parametrize("kwargs,error", [
    (dict(num_classes=0), ValueError), (dict(activation="sigmoid"), ValueError),
    (dict(image_size=MIN_IMAGE_SIZE - 1), ValueError), (dict(impl="cudnn"), ValueError)])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        convnet4(**kwargs)
