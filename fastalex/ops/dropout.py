"""Inverted dropout whose mask is never stored: only a Philox seed is saved for the backward.

The forward draws a seed from torch's generator for the tensor's device (so ``torch.manual_seed``
reproduces a run and consecutive calls differ) and keeps it, as a (1,) int64 device tensor, for
the backward, which regenerates the same mask from it. Which units are kept is a function of
the seed and each element's logical index alone (see ``kernels/dropout.py``).
"""

import torch

from fastalex.backend import reference_dtype, uses_triton
from fastalex.kernels.dropout import (
    dropout_backward,
    dropout_forward,
    dropout_forward_,
    dropout_output,
)
from fastalex.ops._checks import check_probability, check_tensor
from fastalex.ops._registry import kernel_op
from fastalex.ops._rng import philox_seed


def _fake(t, seed, p):
    return dropout_output(t)


_forward = kernel_op("dropout_forward", dropout_forward, _fake)
_backward = kernel_op("dropout_backward", dropout_backward, _fake)


class DropoutFunction(torch.autograd.Function):
    """y = x / (1 - p) on kept units, 0 on dropped ones; saves only the seed."""

    @staticmethod
    def forward(ctx, x, p, inplace):
        seed = philox_seed(x.device)
        if inplace:
            if torch.compiler.is_compiling():
                # traced graphs are functional: compute, then write back (Inductor re-inplaces)
                x.copy_(_forward(x, seed, p))
            else:
                dropout_forward_(x, seed, p)
            ctx.mark_dirty(x)
            y = x
        else:
            y = _forward(x, seed, p)
        ctx.save_for_backward(seed)
        ctx.p = p
        return y

    @staticmethod
    def backward(ctx, dy):
        (seed,) = ctx.saved_tensors
        return _backward(dy, seed, ctx.p), None, None


def dropout_arguments(p, training, inplace) -> float:
    """Every check of the arguments besides the input (the layer runs them at construction):
    ``p`` a number in [0, 1], ``training`` and ``inplace`` bools; returns ``p`` as a float."""
    p = check_probability("p", p)
    for name, value in (("training", training), ("inplace", inplace)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    return p


def _reference(input, p, inplace):
    """torch's dropout in a dtype it has a kernel for, the result rounded back once."""
    dtype = reference_dtype(input)
    if dtype == input.dtype:
        return torch.nn.functional.dropout(input, p, True, inplace)
    out = torch.nn.functional.dropout(input.to(dtype), p, True, False).to(input.dtype)
    return input.copy_(out) if inplace else out


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False) -> torch.Tensor:
    """``torch.nn.functional.dropout``'s semantics (inverted dropout, identity in eval; p=0
    returns ``input`` itself, as torch does), except that dropped NaN/Inf units give 0 and the
    backward regenerates the mask instead of reading a stored one."""
    check_tensor("input", input)
    p = dropout_arguments(p, training, inplace)
    if not training or p == 0.0 or input.numel() == 0:
        return input  # torch's dropout returns its input unchanged in these cases too
    if not uses_triton(input):
        return _reference(input, p, inplace)
    if inplace:
        _check_writable(input)
    return DropoutFunction.apply(input, p, inplace)


def _check_writable(x):
    """torch's in-place checks, made before the kernel writes: autograd would only raise them
    after the Function's forward, with the input already overwritten."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return
    if x.is_leaf:
        raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                           "operation.")
    if x._base is not None and x._base.is_leaf and x._base.requires_grad:
        raise RuntimeError("a view of a leaf Variable that requires grad is being used in an "
                           "in-place operation.")
