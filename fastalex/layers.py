"""``torch.nn`` modules backed by fastalex's ops.

Each subclasses the ``torch.nn`` module it replaces, so constructor arguments, attribute names,
``repr`` and ``state_dict`` keys are the same and weights move freely between the two.
"""

from torch import nn

from fastalex import functional as F
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
    """``torch.nn.Conv2d`` (zero padding, dilation 1) on fastalex's implicit-GEMM kernels."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation=1,
                         groups=groups, bias=bias, padding_mode="zeros", device=device,
                         dtype=dtype)

    def forward(self, input):
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.groups)


class Conv2dReLU(Conv2d):
    """Convolution + bias + ReLU in one kernel; parameters and state_dict as ``nn.Conv2d``'s."""

    def forward(self, input):
        return F.conv2d_relu(input, self.weight, self.bias, self.stride, self.padding,
                             self.groups)


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
