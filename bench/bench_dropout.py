"""Dropout on AlexNet's fc6/fc7 activations (128 x 4096, p = 0.5): fastalex (mask regenerated
from a Philox seed, nothing stored) against torch eager (``F.dropout``, which stores a bool mask)
and torch.compile of the same, forward and forward+backward, fp32 and bf16.

nbytes is the floor: forward reads x and writes y; backward reads dy and writes dx. torch eager
also writes the mask in the forward and reads it in the backward (1 byte per element), which is
not counted. ``peak_extra_mib`` shows what each variant keeps alive.
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import compiled, run_benchmark

from fastalex.ops.dropout import dropout

P = 0.5
SHAPES = {"full": (128, 4096), "smoke": (4, 64)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("fastalex", "eager", "compile")
DIRECTIONS = ("fwd", "fwdbwd")


def _reference(t):
    return F.dropout(t, P, True)


def _fastalex(t):
    return dropout(t, P, True)


CASES = [
    pytest.param(dtype, direction, impl, id=f"fc-{dtype}-{direction}-{impl}")
    for dtype in DTYPES
    for direction in DIRECTIONS
    for impl in IMPLS
]


@pytest.mark.parametrize("dtype, direction, impl", CASES)
def test_dropout(benchmark, bench_mode, bench_device, dtype, direction, impl):
    shape = SHAPES[bench_mode]
    torch_dtype = DTYPES[dtype]
    op = {"fastalex": _fastalex, "eager": _reference}.get(impl) or compiled(_reference, bench_mode)
    x = torch.randn(shape, device=bench_device, dtype=torch_dtype)
    element_bytes = x.numel() * x.element_size()
    if direction == "fwd":
        def fn():
            return op(x)

        nbytes = 2 * element_bytes
    else:
        x.requires_grad_()
        dy = torch.randn_like(x)

        def fn():
            return torch.autograd.grad(op(x), x, dy)

        nbytes = 4 * element_bytes
    run_benchmark(
        benchmark, fn, bench_mode, nbytes=nbytes,
        shape=list(shape), dtype=dtype, p=P, impl=impl, direction=direction,
        stored_mask_bytes=0 if impl == "fastalex" else x.numel(),
    )
