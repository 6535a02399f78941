"""Fully-connected layers: ``linear`` and ``linear_relu`` (+ inverted dropout) on one GEMM kernel.

``linear_relu(x, W, b, p, training)`` computes ``dropout(relu(x @ W^T + b), p)`` with bias, ReLU
and dropout in the GEMM's epilogue (``kernels/linear.py``); dropout only when ``training`` and
``p > 0``. Its mask is the dropout op's: with the seed drawn by ``philox_seed`` (torch's
generator), element (m, n) of the [M, N] output is kept iff ``dropout_keep(seed, m * N + n, p)``,
as ``fastalex.functional.dropout`` decides for a contiguous [M, N] tensor.

The backward takes its mask from the saved output z, not from the seed: ``z > 0`` exactly where
the unit was kept and ReLU passed it, so ``dh = where(z > 0, dy / (1 - p), 0)``, formed by the
GEMMs as they load dy (docs/kernels/linear.md says why and where the two masks could differ).

Under ``torch.autocast`` the input, weight and bias are cast to the autocast dtype as
``F.linear`` does; fp32 follows ``torch.backends.cuda.matmul.allow_tf32``.
"""

import math

import torch
import torch.nn.functional as F

from fastalex.backend import uses_triton
from fastalex.kernels._runtime import tf32_allowed
from fastalex.kernels.linear import (
    dropout_scale,
    linear_forward,
    linear_grad_input,
    linear_grad_weight,
)
from fastalex.ops._autocast import autocast_cast
from fastalex.ops._checks import check_parameters, check_probability, check_same, check_tensor
from fastalex.ops._registry import kernel_op
from fastalex.ops._rng import philox_seed


def _forward_fake(x, weight, bias, seed, relu, p, tf32):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _grad_input_fake(dy, z, weight, scale, tf32):
    return dy.new_empty((dy.shape[0], weight.shape[1]))


def _grad_weight_fake(dy, z, x, scale, with_bias, tf32):
    return [dy.new_empty((dy.shape[1], x.shape[1])),
            dy.new_empty((dy.shape[1] if with_bias else 0,))]


_forward = kernel_op("linear_forward", linear_forward, _forward_fake)
_grad_input = kernel_op("linear_grad_input", linear_grad_input, _grad_input_fake)
_grad_weight = kernel_op("linear_grad_weight", linear_grad_weight, _grad_weight_fake)


class LinearFunction(torch.autograd.Function):
    """z = dropout(act(x @ W^T + b)) on 2-D x; saves z (ReLU: its sign is the backward's mask)
    and, for the gradients that are needed, x and W."""

    @staticmethod
    def forward(ctx, x, weight, bias, relu, p, seed, tf32):
        z = _forward(x, weight, bias, seed, relu, p, tf32)
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        ctx.save_for_backward(x if need_dw else None, weight if need_dx else None,
                              z if relu else None)
        ctx.scale = dropout_scale(p) if seed is not None else 1.0
        ctx.has_bias = bias is not None
        ctx.tf32 = tf32
        return z

    @staticmethod
    def backward(ctx, dy):
        x, weight, z = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx = dw = db = None
        if need_dx:
            dx = _grad_input(dy, z, weight, ctx.scale, ctx.tf32)
        if need_dw:
            dw, db = _grad_weight(dy, z, x, ctx.scale, ctx.has_bias and need_db, ctx.tf32)
            if not need_db:
                db = None
        elif need_db:
            # frozen weight, trained bias (rare): no GEMM to fuse the column sums into
            dh = dy if z is None else torch.where(z > 0, dy * ctx.scale, 0)
            db = dh.sum(0)
        return dx, dw, db, None, None, None, None


def _validate(input, weight, bias, p, training):
    """Every argument check, before any kernel runs. Dtypes may differ only under autocast,
    which casts them (as for F.linear); devices never."""
    check_tensor("input", input, min_dim=1)
    check_tensor("weight", weight, dims=(2,))
    if bias is not None:
        check_tensor("bias", bias, dims=(0, 1))
    p = check_probability("p", p)
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")
    check_parameters(input, weight, bias)
    out_features, in_features = weight.shape
    if input.shape[-1] != in_features:
        raise ValueError(f"input's last dimension {input.shape[-1]} must equal in_features = "
                         f"weight.shape[1] = {in_features} (input shape {tuple(input.shape)})")
    if bias is not None and tuple(bias.shape) not in ((out_features,), (1,), ()):
        raise ValueError(f"bias must have shape ({out_features},) (weight.shape[0]), or () or "
                         f"(1,) to broadcast, got {tuple(bias.shape)}")
    return p


def _linear(input, weight, bias, relu, p, training):
    p = _validate(input, weight, bias, p, training)
    dropout = relu and training and p > 0.0
    if not uses_triton(input):
        y = F.linear(input, weight, bias)
        if relu:
            y = F.relu(y)
        return F.dropout(y, p, True) if dropout else y
    input, weight, bias = autocast_cast(input.device.type, input, weight, bias)
    if bias is not None:
        bias = bias.expand(weight.shape[0])  # a broadcast bias reads with stride 0
    check_same("weight", weight, "input", input)
    if bias is not None:
        check_same("bias", bias, "input", input)
    out_features, in_features = weight.shape
    # a view where the strides allow, else a copy (-1 would be ambiguous for in_features = 0)
    x = input.reshape(math.prod(input.shape[:-1]), in_features)
    if x.stride(0) != 1 and x.stride(1) != 1:
        # the kernel reads any strides, but in vectors only along a unit-stride dim; x is read
        # once per column block of the weight, so one copy costs less
        x = x.contiguous()
    if x.shape[0] * out_features == 0:
        dropout = False  # nothing to drop: draw no seed
    seed = philox_seed(input.device) if dropout else None
    y = LinearFunction.apply(x, weight, bias, relu, p, seed, tf32_allowed("matmul"))
    return y.reshape(*input.shape[:-1], out_features)


def linear(input, weight, bias=None):
    """``torch.nn.functional.linear(input, weight, bias=None)``: ``input @ weight^T + bias``
    with the bias fused into the GEMM. input: [*, in_features]; weight: [out_features,
    in_features]; bias: [out_features]; any strides on each."""
    return _linear(input, weight, bias, relu=False, p=0.0, training=False)


def linear_relu(input, weight, bias=None, p=0.0, training=False):
    """fastalex's extension of ``F.linear``:
    ``F.dropout(F.relu(F.linear(input, weight, bias)), p, training)`` in one GEMM (bias, ReLU
    and dropout in its epilogue). Dropout when ``training`` and ``p > 0``, with the dropout op's
    mask for the seed drawn from torch's generator (``torch.manual_seed`` reproduces it); no
    random number is drawn otherwise. p=1 gives exact zeros; dropped units are 0 even where the
    pre-activation is NaN or Inf (as ``fastalex.functional.dropout``)."""
    return _linear(input, weight, bias, relu=True, p=p, training=training)
