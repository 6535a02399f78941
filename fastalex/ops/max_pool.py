"""2D max-pool as a ``torch.autograd.Function``: torch's semantics, a compact arg-max for backward.

The forward saves only a window-local arg-max (1 byte per output for windows of up to 127
elements, against torch's 8-byte indices), never the input; the backward gathers ``dy`` into
``dx`` from it. torch's int64 indices are written only when ``return_indices`` asks for them.
Outputs, indices, NaN propagation and tie-breaking match ``torch.nn.functional.max_pool2d``.
"""

import torch
import torch.nn.functional as F

from fastalex.backend import reference_dtype, uses_triton
from fastalex.kernels.max_pool import forward_outputs, max_pool2d_backward, max_pool2d_forward
from fastalex.ops._checks import check_tensor, pair
from fastalex.ops._registry import kernel_op


def _pair(name: str, value, *, minimum: int) -> tuple:
    # torch also accepts one-element sequences for the pooling arguments.
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = (value[0], value[0])
    return pair(name, value, minimum=minimum)


def pool_arguments(kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    """Every check of the pooling arguments that does not need the input (the layer runs them
    at construction); returns (kernel, stride, padding, dilation) as 2-tuples."""
    kernel = _pair("kernel_size", kernel_size, minimum=1)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        strides = kernel  # torch: no stride means stride = kernel_size
    else:
        strides = _pair("stride", stride, minimum=1)
    pads = _pair("padding", padding, minimum=0)
    dilations = _pair("dilation", dilation, minimum=1)
    for name, value in (("ceil_mode", ceil_mode), ("return_indices", return_indices)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    if pads[0] > kernel[0] // 2 or pads[1] > kernel[1] // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size, got padding={pads} and "
            f"kernel_size={kernel}"
        )
    return kernel, strides, pads, dilations


def _output_size(size: int, kernel: int, stride: int, pad: int, dilation: int,
                 ceil_mode: bool) -> int:
    """torch's pooling_output_shape: floor (or ceil) division, and with ceil_mode the last
    window must start inside the input or its left padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _suggests_channels_last(x: torch.Tensor) -> bool:
    """torch's ``suggest_memory_format(x) == channels_last`` (is_channels_last_strides_2d_s4):
    strides ordered C < W < H < N, ambiguous cases (size-1 dims, empty tensors) being NCHW.
    torch's pooling keeps this format in its output and gradient."""
    if x.dim() != 4:
        return False
    sizes, strides = x.shape, x.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def _forward_fake(x, kernel_size, stride, padding, dilation, out_h, out_w, channels_last,
                  with_arg, with_index):
    return forward_outputs(x, kernel_size, out_h, out_w, channels_last, with_arg, with_index)


def _backward_fake(grad_output, arg, in_h, in_w, kernel_size, stride, padding, dilation,
                   channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((arg.shape[0], arg.shape[1], in_h, in_w), dtype=grad_output.dtype,
                       device=grad_output.device, memory_format=fmt)


_forward = kernel_op("max_pool2d_forward", max_pool2d_forward, _forward_fake)
_backward = kernel_op("max_pool2d_backward", max_pool2d_backward, _backward_fake)


class MaxPool2dFunction(torch.autograd.Function):
    """Max-pool of a 4D tensor into (y, index); saves the compact arg-max, not the input.
    ``index`` holds torch's int64 indices when ``with_index``, else it is an empty tensor."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, out_h, out_w, channels_last,
                grad_enabled, with_index):
        # The arg-max is written only when a backward can follow (not under no_grad, where
        # needs_input_grad still says True for an input that requires grad).
        with_arg = bool(grad_enabled and ctx.needs_input_grad[0])
        y, arg, index = _forward(x, kernel_size, stride, padding, dilation, out_h, out_w,
                                 channels_last, with_arg, with_index)
        if with_arg:
            ctx.save_for_backward(arg)
        ctx.geometry = (x.shape[2], x.shape[3], kernel_size, stride, padding, dilation,
                        channels_last)
        ctx.mark_non_differentiable(index)
        return y, index

    @staticmethod
    def backward(ctx, grad_output, _grad_index):
        (arg,) = ctx.saved_tensors
        in_h, in_w, kernel_size, stride, padding, dilation, channels_last = ctx.geometry
        grad_input = _backward(grad_output, arg, in_h, in_w, kernel_size, stride, padding,
                               dilation, channels_last)
        return grad_input, None, None, None, None, None, None, None, None, None


def _reference(input, kernel, strides, pads, dilations, ceil_mode, return_indices):
    """torch's max_pool2d in a dtype it has a kernel for, rounded back (exact: a max)."""
    dtype = reference_dtype(input)
    out = F.max_pool2d(input.to(dtype), kernel, strides, pads, dilations, ceil_mode,
                       return_indices)
    if return_indices:
        return out[0].to(input.dtype), out[1]
    return out.to(input.dtype)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """``torch.nn.functional.max_pool2d`` for 3D (C, H, W) and 4D (N, C, H, W) input: same
    output, memory format, NaN propagation and arg-max tie-breaking (the gradient goes to the
    first maximum of each window, or its last NaN); with ``return_indices``, also torch's int64
    indices (usable by ``torch.nn.MaxUnpool2d``)."""
    check_tensor("input", input, dims=(3, 4))
    kernel, strides, pads, dilations = pool_arguments(kernel_size, stride, padding, dilation,
                                                      ceil_mode, return_indices)
    C, H, W = input.shape[-3:]
    if C == 0 or H == 0 or W == 0:
        raise ValueError(
            f"input must have non-zero channels, height and width (only the batch may be "
            f"empty), got shape {tuple(input.shape)}"
        )
    out_h = _output_size(H, kernel[0], strides[0], pads[0], dilations[0], ceil_mode)
    out_w = _output_size(W, kernel[1], strides[1], pads[1], dilations[1], ceil_mode)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"input of size {H}x{W} is too small for kernel_size={kernel}, stride={strides}, "
            f"padding={pads}, dilation={dilations}: the output would be {out_h}x{out_w}"
        )

    if not uses_triton(input):
        return _reference(input, kernel, strides, pads, dilations, ceil_mode, return_indices)

    x = input if input.dim() == 4 else input.unsqueeze(0)
    y, index = MaxPool2dFunction.apply(x, list(kernel), list(strides), list(pads),
                                       list(dilations), out_h, out_w,
                                       _suggests_channels_last(input), torch.is_grad_enabled(),
                                       return_indices)
    if input.dim() == 3:
        y, index = y.squeeze(0), index.squeeze(0)
    return (y, index) if return_indices else y
