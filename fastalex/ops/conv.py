"""2-D convolution (+ bias, + ReLU) on the implicit-GEMM kernels of ``kernels/conv.py``.

The arguments are ``torch.nn.functional.conv2d``'s: ``padding`` an int, a pair, ``"valid"`` or
``"same"`` (asymmetric where torch pads asymmetrically: even kernels put the extra row and
column at the bottom and right), any ``dilation``. Layout: the kernels work channels-last
(NHWC). Inputs of any strides are accepted (others than channels-last cost one copy); the
output has the logical NCHW shape of ``F.conv2d`` but is **channels-last in memory**, so the
next layer reads it without a copy. The weight keeps ``nn.Conv2d``'s shape [Cout, Cin/groups,
KH, KW]; the kernels read it as [Cout, KH, KW, Cin/groups], a free view when the weight is
channels-last and a small copy otherwise. Its gradient comes back in the weight's own shape and
memory format.

The ReLU variant saves its output, not the pre-activation: the backward takes the ReLU mask
from ``output > 0``. An RGB input (3 channels, groups=1) is stored with a zero fourth channel
for the kernels (see ``Conv2dFunction``). Under ``torch.autocast`` the input, weight and bias
are cast to the autocast dtype, as ``F.conv2d`` does. fp32 follows
``torch.backends.cudnn.allow_tf32``.
"""

import operator
from typing import Optional

import torch
import torch.nn.functional as F

from fastalex.backend import reference_dtype, uses_triton
from fastalex.kernels._runtime import tf32_allowed
from fastalex.kernels.conv import (
    conv2d_forward,
    conv2d_input_grad,
    conv2d_relu_grad,
    conv2d_weight_grad,
    output_size,
    relu_grad_in_kernels,
)
from fastalex.ops._autocast import autocast_cast
from fastalex.ops._checks import check_parameters, check_same, check_tensor
from fastalex.ops._registry import kernel_op

_CL = torch.channels_last


def _forward_fake(x, weight, bias, stride, padding, dilation, groups, relu, tf32):
    n, _, h, w = x.shape
    cout, kh, kw, _ = weight.shape
    oh = output_size(h, kh, stride[0], padding[0], padding[1], dilation[0])
    ow = output_size(w, kw, stride[1], padding[2], padding[3], dilation[1])
    return torch.empty((n, cout, oh, ow), dtype=x.dtype, device=x.device, memory_format=_CL)


def _input_grad_fake(grad_out, weight, input_hw, stride, padding, dilation, groups, tf32):
    n = grad_out.shape[0]
    cin = weight.shape[3] * groups
    return torch.empty((n, cin, *input_hw), dtype=grad_out.dtype, device=grad_out.device,
                       memory_format=_CL)


def _weight_grad_fake(grad_out, out, x, weight_shape, stride, padding, dilation, groups, relu,
                      has_bias, tf32, channels_last):
    cout = grad_out.shape[1]
    fmt = _CL if channels_last else torch.contiguous_format
    dw = torch.empty(weight_shape, dtype=grad_out.dtype, device=grad_out.device,
                     memory_format=fmt)
    db = torch.empty((cout if has_bias else 0,), dtype=grad_out.dtype, device=grad_out.device)
    return dw, db


def _relu_grad_fake(grad_out, out):
    return torch.empty(grad_out.shape, dtype=grad_out.dtype, device=grad_out.device,
                       memory_format=_CL)


_forward = kernel_op("conv2d_forward", conv2d_forward, _forward_fake)
_relu_grad = kernel_op("conv2d_relu_grad", conv2d_relu_grad, _relu_grad_fake)
_input_grad = kernel_op("conv2d_input_grad", conv2d_input_grad, _input_grad_fake)
_weight_grad = kernel_op("conv2d_weight_grad", conv2d_weight_grad, _weight_grad_fake)


class Conv2dFunction(torch.autograd.Function):
    """act(conv2d(x, w) + b), act = ReLU or identity; saves x, the packed w and (ReLU) y.

    ``padding`` is [top, bottom, left, right]; ``stride`` and ``dilation`` are pairs."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, relu):
        w_packed = weight.permute(0, 2, 3, 1).contiguous()  # free for a channels-last weight
        ctx.rgb = groups == 1 and x.shape[1] == 3
        if ctx.rgb:
            # RGB input: a zero 4th channel makes a pixel 8 bytes (fp16/bf16), so the patch
            # gather moves 8-byte vectors instead of 2-byte loads, for 4/3 of the MMA work.
            # The copy also does the NHWC conversion an NCHW image needs anyway.
            x = F.pad(x.permute(0, 2, 3, 1), (0, 1)).contiguous().permute(0, 3, 1, 2)
            w_packed = F.pad(w_packed, (0, 1))
        else:
            x = x.contiguous(memory_format=_CL)
        tf32 = tf32_allowed("conv")
        y = _forward(x, w_packed, bias, stride, padding, dilation, groups, relu, tf32)
        ctx.save_for_backward(x, w_packed, y if relu else None)
        ctx.conv = (stride, padding, dilation, groups, relu, tf32)
        ctx.has_bias = bias is not None
        ctx.weight_shape = list(weight.shape)
        ctx.weight_channels_last = (not weight.is_contiguous()
                                    and weight.is_contiguous(memory_format=_CL))
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, w_packed, y = ctx.saved_tensors
        stride, padding, dilation, groups, relu, tf32 = ctx.conv
        grad_out = grad_out.contiguous(memory_format=_CL)
        dx = dw = db = None
        if relu and not relu_grad_in_kernels(ctx.needs_input_grad[0], ctx.weight_shape, groups,
                                             grad_out.element_size()):
            grad_out, y, relu = _relu_grad(grad_out, y), None, False
        if ctx.needs_input_grad[0]:
            dx = _input_grad(grad_out, w_packed, list(x.shape[2:]), stride, padding, dilation,
                             groups, tf32)
            if ctx.rgb:
                dx = dx[:, :3]
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw, db = _weight_grad(grad_out, y, x, ctx.weight_shape, stride, padding, dilation,
                                  groups, relu, ctx.has_bias, tf32, ctx.weight_channels_last)
            if not ctx.has_bias:
                db = None
        return dx, dw, db, None, None, None, None, None


def _int(name: str, value, *, minimum: int) -> int:
    """``value`` as an int (anything with ``__index__`` but a bool), no smaller than
    ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def conv_pair(name: str, value, *, minimum: int) -> tuple:
    """An int, or a sequence of one or two ints as torch accepts, as a pair of ints."""
    if isinstance(value, (tuple, list)):
        if len(value) not in (1, 2):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        values = [_int(name, v, minimum=minimum) for v in value]
        return values[0], values[-1]
    value = _int(name, value, minimum=minimum)
    return value, value


def conv_padding(padding, stride: tuple, dilation: tuple, kernel: tuple) -> tuple:
    """(top, bottom, left, right) for ``padding``: "valid", "same" (torch's split: half the
    total before, the rest after), an int or a pair."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding != "same":
            raise ValueError(f"padding must be 'same', 'valid', an int or a pair of ints, got "
                             f"{padding!r}")
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as in torch), got stride={stride}")
        pads = []
        for d, k in zip(dilation, kernel):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = conv_pair("padding", padding, minimum=0)
    return ph, ph, pw, pw


def conv_arguments(stride, padding, dilation, groups, kernel: tuple) -> tuple:
    """Check the non-tensor arguments of a convolution with a ``kernel`` = (KH, KW) filter;
    returns (stride, (top, bottom, left, right) padding, dilation, groups)."""
    stride = conv_pair("stride", stride, minimum=1)
    dilation = conv_pair("dilation", dilation, minimum=1)
    groups = _int("groups", groups, minimum=1)
    return stride, conv_padding(padding, stride, dilation, kernel), dilation, groups


def _validate(input, weight, bias, stride, padding, dilation, groups):
    """Every argument check, before any kernel runs; returns (stride, pads, dilation, groups).

    Under autocast mixed dtypes are allowed (they are cast, as for F.conv2d); devices never mix.
    """
    check_tensor("input", input, dims=(3, 4))
    check_tensor("weight", weight, dims=(4,))
    if bias is not None:
        check_tensor("bias", bias, dims=(1,))
    check_parameters(input, weight, bias)
    cout, cin_g, kh, kw = weight.shape
    if min(cout, cin_g, kh, kw) == 0:
        raise ValueError(f"weight must have non-zero sizes, got shape {tuple(weight.shape)}")
    stride, pads, dilation, groups = conv_arguments(stride, padding, dilation, groups, (kh, kw))
    cin, h, w = input.shape[-3:]
    if cin % groups != 0:
        raise ValueError(f"groups={groups} must divide the input's {cin} channels")
    if cout % groups != 0:
        raise ValueError(f"groups={groups} must divide the {cout} output channels "
                         f"(weight.shape[0])")
    if cin != cin_g * groups:
        raise ValueError(f"input has {cin} channels but weight expects weight.shape[1] * groups "
                         f"= {cin_g} * {groups} = {cin_g * groups}")
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"bias must have shape ({cout},) (weight.shape[0]), got "
                         f"{tuple(bias.shape)}")
    span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if h + pads[0] + pads[1] < span_h or w + pads[2] + pads[3] < span_w:
        raise ValueError(f"weight's kernel {kh}x{kw} (dilation {dilation}) spans "
                         f"{span_h}x{span_w}, more than the padded input "
                         f"{h + pads[0] + pads[1]}x{w + pads[2] + pads[3]}")
    return stride, pads, dilation, groups


def _reference(input, weight, bias, stride, padding, pads, dilation, groups, relu):
    """``F.conv2d`` (+ ReLU) in :func:`reference_dtype`, rounded back to the input's dtype once
    (torch's CPU bf16 convolution backward accumulates in bf16). Autocast keeps its own casts."""
    dtype = input.dtype
    compute = dtype if torch.is_autocast_enabled(input.device.type) else reference_dtype(input)

    def cast(t):
        return t if t is None or t.dtype == compute else t.to(compute)

    y = F.conv2d(cast(input), cast(weight), cast(bias), stride,
                 padding if isinstance(padding, str) else (pads[0], pads[2]), dilation, groups)
    y = F.relu(y) if relu else y
    return y.to(dtype) if compute != dtype else y


def _conv(input, weight, bias, stride, padding, dilation, groups, relu):
    stride, pads, dilation, groups = _validate(input, weight, bias, stride, padding, dilation,
                                               groups)
    if not uses_triton(input):
        return _reference(input, weight, bias, stride, padding, pads, dilation, groups, relu)
    # channels-last in the autocast copy: the kernels would convert an NCHW input anyway
    input, weight, bias = autocast_cast(input.device.type, input, weight, bias,
                                        memory_format_4d=_CL)
    check_same("weight", weight, "input", input)
    if bias is not None:
        check_same("bias", bias, "input", input)
    args = (list(stride), list(pads), list(dilation), groups, relu)
    if input.dim() == 3:  # unbatched, as F.conv2d allows
        return Conv2dFunction.apply(input.unsqueeze(0), weight, bias, *args).squeeze(0)
    return Conv2dFunction.apply(input, weight, bias, *args)


def conv2d(input, weight, bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1,
           groups=1):
    """``torch.nn.functional.conv2d`` as an implicit GEMM (same arguments, same values).

    Returns the logical NCHW result in channels-last memory on the Triton path.
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, relu=False)


def conv2d_relu(input, weight, bias: Optional[torch.Tensor] = None, stride=1, padding=0,
                dilation=1, groups=1):
    """``F.relu(F.conv2d(input, weight, bias, stride, padding, dilation, groups))`` in one
    kernel (bias and ReLU in the GEMM's epilogue); output channels-last in memory."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, relu=True)
