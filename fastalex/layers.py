"""``torch.nn`` modules backed by fastalex's ops.

Each subclasses the ``torch.nn`` module it replaces, so constructor arguments, attribute names,
``repr`` and ``state_dict`` keys are the same and weights move freely between the two.
"""

from torch import nn

from fastalex import functional as F


class LRN(nn.LocalResponseNorm):
    """Drop-in for ``torch.nn.LocalResponseNorm(size, alpha, beta, k)`` (same semantics:
    ``alpha`` is divided by ``size``; the window is zero-padded, ``size // 2`` channels before and
    ``(size - 1) // 2`` after). Fused Triton forward and backward on a GPU."""

    def forward(self, input):
        return F.lrn(input, self.size, self.alpha, self.beta, self.k)


LocalResponseNorm = LRN


class MaxPool2d(nn.MaxPool2d):
    """Drop-in for ``torch.nn.MaxPool2d``: same output, NaN propagation and arg-max tie-breaking,
    without an int64 index tensor. ``return_indices=True`` is not supported."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        if return_indices:
            raise ValueError(
                "return_indices=True is not supported by fastalex.layers.MaxPool2d; "
                "use torch.nn.MaxPool2d when the indices are needed"
            )
        super().__init__(kernel_size, stride, padding, dilation, False, ceil_mode)

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode)


class Dropout(nn.Dropout):
    """Drop-in for ``torch.nn.Dropout``: inverted dropout whose mask is never stored, but
    regenerated in the backward from a Philox seed drawn from torch's generator."""

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
