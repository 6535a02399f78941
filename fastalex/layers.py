"""``torch.nn`` modules backed by fastalex's ops.

Each subclasses the ``torch.nn`` module it replaces, so constructor arguments, attribute names,
``repr`` and ``state_dict`` keys are the same and weights move freely between the two.
"""

from torch import nn

from fastalex import functional as F
from fastalex.ops._checks import FLOAT_DTYPES
from fastalex.ops.conv import conv_arguments, conv_pair
from fastalex.ops.dropout import dropout_arguments
from fastalex.ops.lrn import lrn_arguments
from fastalex.ops.max_pool import pool_arguments


class LocalResponseNorm(nn.LocalResponseNorm):
    """Drop-in for ``torch.nn.LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=1.0)`` (same
    semantics: ``alpha`` is divided by ``size``; the window is zero-padded, ``size // 2``
    channels before and ``(size - 1) // 2`` after), also named ``LRN``. Fused Triton forward and
    backward on a GPU. Arguments are checked here: ``size`` an int >= 1, the others finite
    numbers."""

    def __init__(self, size: int, alpha: float = 0.0001, beta: float = 0.75,
                 k: float = 1.0) -> None:
        lrn_arguments(size, alpha, beta, k)
        super().__init__(size, alpha, beta, k)

    def forward(self, input):
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


LRN = LocalResponseNorm


class MaxPool2d(nn.MaxPool2d):
    """Drop-in for ``torch.nn.MaxPool2d``: same output, indices (``return_indices=True``), NaN
    propagation and arg-max tie-breaking; the backward uses a 1-byte window-local arg-max
    instead of int64 indices. Arguments are checked here (padding at most half the kernel, as
    torch requires at the first call)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False) -> None:
        pool_arguments(kernel_size, stride, padding, dilation, ceil_mode, return_indices)
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class Dropout(nn.Dropout):
    """Drop-in for ``torch.nn.Dropout(p=0.5, inplace=False)``: inverted dropout whose mask is
    never stored, but regenerated in the backward from a Philox seed drawn from torch's
    generator. ``p`` must be a number in [0, 1] and ``inplace`` a bool."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        dropout_arguments(p, True, inplace)
        super().__init__(p, inplace)

    def forward(self, input):
        return F.dropout(input, self.p, self.training, self.inplace)


class Conv2d(nn.Conv2d):
    """Drop-in for ``torch.nn.Conv2d`` (same signature, attributes and state_dict) on fastalex's
    implicit-GEMM kernels, bias in the epilogue. Every ``padding`` and ``padding_mode`` torch
    takes: ``"zeros"`` pads inside the kernels; the other modes pad with ``F.pad`` first, as
    ``nn.Conv2d`` does. Unsupported values raise ValueError here, not in ``forward``."""

    _relu = False

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(str, FLOAT_DTYPES))}, got "
                             f"{dtype}")
        for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(channels, int) and channels < 1:
                raise ValueError(f"{name} must be >= 1, got {channels}")
        conv_pair("kernel_size", kernel_size, minimum=1)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        conv_arguments(self.stride, self.padding, self.dilation, self.groups, self.kernel_size)

    def forward(self, input):
        return self._conv_forward(input, self.weight, self.bias)

    def _conv_forward(self, input, weight, bias):
        conv = F.conv2d_relu if self._relu else F.conv2d
        if self.padding_mode != "zeros":
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice,
                                      mode=self.padding_mode)
            return conv(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dReLU(Conv2d):
    """``Conv2d`` + ReLU in one kernel (bias and ReLU in the epilogue); signature, attributes
    and state_dict as ``nn.Conv2d``'s."""

    _relu = True


class Linear(nn.Linear):
    """Drop-in for ``torch.nn.Linear(in_features, out_features, bias=True, device=None,
    dtype=None)`` on fastalex's GEMM kernel, with the bias fused in its epilogue."""

    def forward(self, input):
        return F.linear(input, self.weight, self.bias)


class LinearReLU(nn.Linear):
    """fastalex's extension of ``torch.nn.Linear``: linear + bias + ReLU (+ inverted dropout
    with probability ``p`` in training) in one GEMM. ``nn.Linear``'s arguments in its order,
    then the keyword-only ``p``; parameters and state_dict as ``nn.Linear``'s."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 p=0.0):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a number in [0, 1], got {p!r}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.p = float(p)

    def forward(self, input):
        return F.linear_relu(input, self.weight, self.bias, p=self.p, training=self.training)

    def extra_repr(self):
        return super().extra_repr() + f", p={self.p}"
