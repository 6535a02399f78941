"""AlexNet's three 3x3/stride-2 max-pools at batch 128: fastalex against torch eager
(``F.max_pool2d``) and torch.compile of the same, forward and forward+backward, fp32 and bf16,
channels-last (the layout the model runs in) for all three and NCHW for the largest.

The input is a ReLU output, as in the model: windows full of equal zeros are common.
"fwd" runs without autograd (inference: fastalex stores no arg-max, torch eager still writes its
int64 indices); "fwdbwd" is a training step's forward (fastalex saves a 1-byte arg-max per
output, torch eager 8-byte indices) and backward.

"fwd-indices" is the forward with ``return_indices=True`` (both write int64 indices, for
``MaxUnpool2d``), without autograd.

nbytes is the floor: forward reads x and writes y (and 8-byte indices in "fwd-indices");
backward reads dy and the arg-max (1 byte per output) and writes dx.
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import compiled, run_benchmark

from fastalex.ops.max_pool import max_pool2d

KERNEL, STRIDE = 3, 2
# name -> (C, H, W) per image; batch 128 in full mode, 2 in smoke mode (tiny planes too).
SHAPES = {
    "pool1": {"full": (128, 96, 55, 55), "smoke": (2, 8, 11, 11)},
    "pool2": {"full": (128, 256, 27, 27), "smoke": (2, 16, 7, 7)},
    "pool5": {"full": (128, 256, 13, 13), "smoke": (2, 16, 5, 5)},
}
LAYOUTS = {"cl": torch.channels_last, "nchw": torch.contiguous_format}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("fastalex", "eager", "compile")
DIRECTIONS = ("fwd", "fwd-indices", "fwdbwd")
# Channels-last everywhere; NCHW for the largest pool only (keeps the suite short).
SHAPE_LAYOUTS = [("pool1", "cl"), ("pool2", "cl"), ("pool5", "cl"), ("pool1", "nchw")]


def _reference(t, return_indices=False):
    return F.max_pool2d(t, KERNEL, STRIDE, return_indices=return_indices)


def _fastalex(t, return_indices=False):
    return max_pool2d(t, KERNEL, STRIDE, return_indices=return_indices)


CASES = [
    pytest.param(name, layout, dtype, direction, impl,
                 id=f"{name}-{layout}-{dtype}-{direction}-{impl}")
    for name, layout in SHAPE_LAYOUTS
    for dtype in DTYPES
    for direction in DIRECTIONS
    for impl in IMPLS
]


@pytest.mark.parametrize("name, layout, dtype, direction, impl", CASES)
def test_max_pool(benchmark, bench_mode, bench_device, name, layout, dtype, direction, impl):
    shape = SHAPES[name][bench_mode]
    op = {"fastalex": _fastalex, "eager": _reference}.get(impl) or compiled(_reference, bench_mode)
    x = torch.relu(torch.randn(shape, device=bench_device, dtype=DTYPES[dtype]))
    x = x.contiguous(memory_format=LAYOUTS[layout])
    n, c, h, w = shape
    oh, ow = (h - KERNEL) // STRIDE + 1, (w - KERNEL) // STRIDE + 1
    x_bytes = x.numel() * x.element_size()
    y_bytes = n * c * oh * ow * x.element_size()
    if direction in ("fwd", "fwd-indices"):
        with_indices = direction == "fwd-indices"

        def fn():
            with torch.no_grad():
                return op(x, with_indices)

        nbytes = x_bytes + y_bytes + (n * c * oh * ow * 8 if with_indices else 0)
    else:
        x.requires_grad_()
        dy = torch.randn(n, c, oh, ow, device=bench_device, dtype=x.dtype)
        dy = dy.contiguous(memory_format=LAYOUTS[layout])

        def fn():
            return torch.autograd.grad(op(x), x, dy)

        index_bytes = n * c * oh * ow  # int8 window-local arg-max
        nbytes = (x_bytes + y_bytes) + (y_bytes + index_bytes + x_bytes)
    run_benchmark(
        benchmark, fn, bench_mode, nbytes=nbytes,
        shape=list(shape), layout=layout, dtype=dtype, kernel_size=KERNEL, stride=STRIDE,
        impl=impl, direction=direction,
    )
