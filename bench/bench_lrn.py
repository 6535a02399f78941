"""LRN: fastalex against torch eager (nn.LocalResponseNorm) and torch.compile of it.

AlexNet's two LRN layers at batch 128 (after conv1: 96x55x55, after conv2: 256x27x27) with the
paper's constants, fp32 and bf16, NCHW and channels-last (the model runs channels-last),
forward and forward+backward. ``nbytes`` is the floor: the forward reads x and writes y, the
backward reads x and dy and writes dx.

    pytest bench/bench_lrn.py --benchmark-only     # on a GPU
    pytest bench/bench_lrn.py                      # smoke: each body once, tiny shapes
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import compiled, run_benchmark
from torch import nn

from fastalex.ops.lrn import lrn

SIZE, ALPHA, BETA, K = 5, 5e-4, 0.75, 2.0  # the paper's, in torch's convention
SHAPES = {  # name: (full shape at batch 128, smoke shape)
    "lrn1": ((128, 96, 55, 55), (2, 12, 5, 5)),
    "lrn2": ((128, 256, 27, 27), (2, 40, 3, 3)),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def _fastalex(x):
    return lrn(x, SIZE, ALPHA, BETA, K)


def _torch(x):
    return F.local_response_norm(x, SIZE, ALPHA, BETA, K)


def _impl(name, mode):
    if name == "fastalex":
        return _fastalex
    if name == "eager":
        return nn.LocalResponseNorm(SIZE, ALPHA, BETA, K)
    return compiled(_torch, mode)


@pytest.mark.parametrize("impl", ["fastalex", "eager", "compile"])
@pytest.mark.parametrize("passes", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layer", list(SHAPES))
def test_lrn(benchmark, bench_mode, bench_device, layer, dtype, layout, passes, impl):
    if impl != "fastalex" and dtype == "bf16" and bench_device == "cpu":
        pytest.skip("needs CUDA: torch's CPU avg_pool3d (inside local_response_norm) has no bf16")
    full, smoke = SHAPES[layer]
    shape = full if bench_mode == "full" else smoke
    x = torch.relu(torch.randn(shape, device=bench_device) * 30)  # post-ReLU activations
    x = x.to(DTYPES[dtype]).contiguous(memory_format=LAYOUTS[layout])
    f = _impl(impl, bench_mode)
    numel, item = x.numel(), x.element_size()
    if passes == "fwd":
        def fn():
            return f(x)

        nbytes = 2 * numel * item
        flops = numel * (2 * SIZE + 4)  # squares and window sum, scale, pow (as 2), product
    else:
        x.requires_grad_()
        dy = torch.randn_like(x)

        def fn():
            # autograd.grad, not backward(): no accumulation into x.grad inside the timing
            return torch.autograd.grad(f(x), x, dy)

        nbytes = 5 * numel * item
        flops = numel * (6 * SIZE + 14)
    run_benchmark(benchmark, fn, bench_mode, nbytes=nbytes, flops=flops, op="lrn", layer=layer,
                  shape=list(shape), dtype=dtype, layout=layout, passes=passes, impl=impl)
