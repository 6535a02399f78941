"""The paper's AlexNet, and the four-layer CNN of its Figure 1 (ReLU against tanh)."""

from fastalex.models.alexnet import AlexNet, alexnet, feature_size, initialise_
from fastalex.models.convnet4 import ConvNet4, convnet4, init_convnet4_

__all__ = ["AlexNet", "ConvNet4", "alexnet", "convnet4", "feature_size", "init_convnet4_",
           "initialise_"]
