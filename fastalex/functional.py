"""Functional API: ``fastalex.functional`` mirrors the parts of ``torch.nn.functional`` it fuses.

Every function validates its arguments (ValueError/TypeError naming the argument, before any
kernel runs), then runs the Triton kernels where :func:`fastalex.backend.kernel_path` says so
and plain PyTorch otherwise.
"""

from fastalex.ops.conv import conv2d, conv2d_relu
from fastalex.ops.dropout import dropout
from fastalex.ops.linear import linear, linear_relu
from fastalex.ops.lrn import lrn
from fastalex.ops.max_pool import max_pool2d

local_response_norm = lrn

__all__ = [
    "conv2d",
    "conv2d_relu",
    "dropout",
    "linear",
    "linear_relu",
    "local_response_norm",
    "lrn",
    "max_pool2d",
]
