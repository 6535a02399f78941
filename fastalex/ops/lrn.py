"""Local response normalization across channels (``torch.nn.functional.local_response_norm``).

The autograd Function saves only the input: the backward kernel recomputes the normaliser,
which costs less than writing it in the forward and reading it back.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from fastalex.backend import reference_dtype, uses_triton
from fastalex.kernels.lrn import flattenable, lrn_backward, lrn_forward
from fastalex.ops._checks import check_int, check_number, check_tensor
from fastalex.ops._registry import kernel_op


def _fake_output(x: torch.Tensor) -> torch.Tensor:
    # what the launchers allocate (kernels.lrn.output_like): x's strides when its spatial dims
    # flatten to one stride, else those of a contiguous copy
    return torch.empty_like(flattenable(x))


def _fake_forward(x, size, alpha, beta, k):
    return _fake_output(x)


def _fake_backward(x, grad_out, size, alpha, beta, k):
    return _fake_output(x)


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


def lrn_arguments(size, alpha, beta, k) -> tuple:
    """Every check of the arguments besides the input (the layer runs them at construction):
    ``size`` an int >= 1, the others finite numbers; returns them with floats as floats."""
    check_int("size", size, minimum=1)
    return size, check_number("alpha", alpha), check_number("beta", beta), check_number("k", k)


def lrn(input: torch.Tensor, size: int, alpha: float = 0.0001, beta: float = 0.75,
        k: float = 1.0) -> torch.Tensor:
    """``torch.nn.functional.local_response_norm(input, size, alpha, beta, k)``:
    ``input / (k + alpha / size * sum of squares over size channels) ** beta``, the window
    zero-padded with size // 2 channels before and (size - 1) // 2 after. ``input`` has 3 or
    more dims (N, C, *spatial), any strides; the result keeps a dense input's strides."""
    check_tensor("input", input, min_dim=3)
    size, alpha, beta, k = lrn_arguments(size, alpha, beta, k)
    if not uses_triton(input):
        # torch views 4+-D squares as (N, 1, C, D2, -1), which needs the dims after D2 to
        # merge: other layouts go in as a contiguous copy
        x = flattenable(input) if input.dim() > 4 else input
        dtype = reference_dtype(x)
        return F.local_response_norm(x.to(dtype), size, alpha, beta, k).to(input.dtype)
    return LRNFunction.apply(input, size, alpha, beta, k)


local_response_norm = lrn

__all__ = ["LRNFunction", "local_response_norm", "lrn", "lrn_arguments"]
