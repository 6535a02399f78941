"""The paper's AlexNet."""

from fastalex.models.alexnet import AlexNet, alexnet, feature_size, init_paper_

__all__ = ["AlexNet", "alexnet", "feature_size", "init_paper_"]
