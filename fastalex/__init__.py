"""fastalex: fused Triton GPU kernels for the original 2012 AlexNet.

``fastalex.layers`` holds drop-in ``torch.nn`` modules (``LRN``, ``MaxPool2d``, ``Dropout``,
``Conv2dReLU``, ``LinearReLU``), ``fastalex.functional`` their functional forms,
``fastalex.models.alexnet`` the paper's network and ``python -m fastalex.train`` trains it.
:func:`kernel_path` tells which implementation a tensor takes.
"""

from fastalex.backend import describe, kernel_path, reference_ops, uses_triton

__version__ = "0.1.0"

__all__ = ["describe", "kernel_path", "reference_ops", "uses_triton", "__version__"]
