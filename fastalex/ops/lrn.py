"""Local response normalization across channels (``torch.nn.functional.local_response_norm``).

The autograd Function saves only the input: the backward kernel recomputes the normaliser,
which costs less than writing it in the forward and reading it back.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from fastalex.backend import uses_triton
from fastalex.ops._checks import check_int, check_number, check_tensor
from fastalex.ops._registry import kernel_op

try:
    from fastalex.kernels.lrn import flattenable, lrn_backward, lrn_forward
except ImportError:  # no triton on this platform: lrn() uses the PyTorch reference
    lrn_forward = lrn_backward = None


def _fake_output(x: torch.Tensor) -> torch.Tensor:
    # what the launchers allocate (kernels.lrn.output_like): x's strides when its spatial dims
    # flatten to one stride, else those of a contiguous copy
    return torch.empty_like(flattenable(x))


def _fake_forward(x, size, alpha, beta, k):
    return _fake_output(x)


def _fake_backward(x, grad_out, size, alpha, beta, k):
    return _fake_output(x)


if lrn_forward is not None:
    _forward = kernel_op("lrn_forward", lrn_forward, _fake_forward)
    _backward = kernel_op("lrn_backward", lrn_backward, _fake_backward)


class LRNFunction(torch.autograd.Function):
    """Fused LRN: Triton forward, Triton backward that recomputes the normaliser from x. The
    backward is not differentiable again (double backward raises)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        ctx.save_for_backward(x)
        ctx.params = (size, alpha, beta, k)
        return _forward(x, size, alpha, beta, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return _backward(x, grad_out, *ctx.params), None, None, None, None


def lrn(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
        k: float = 1.0) -> torch.Tensor:
    """``torch.nn.functional.local_response_norm(input, size, alpha, beta, k)``:
    ``input / (k + alpha / size * sum of squares over size channels) ** beta``, the window
    zero-padded with size // 2 channels before and (size - 1) // 2 after. ``input`` has 3 or
    more dims (N, C, *spatial), any strides; the result keeps a dense input's strides."""
    check_tensor("input", input, min_dim=3)
    check_int("size", size, minimum=1)
    alpha = check_number("alpha", alpha)
    beta = check_number("beta", beta)
    k = check_number("k", k)
    if not uses_triton(input):
        return F.local_response_norm(input, size, alpha, beta, k)
    return LRNFunction.apply(input, size, alpha, beta, k)


__all__ = ["LRNFunction", "lrn"]
