"""AlexNet's fully-connected layers at batch 128: fc6 and fc7 as linear + bias + ReLU +
dropout(0.5) in training, fc8 as a plain linear. fastalex's fused GEMM (one GEMM forward, two
backward with the mask taken from the saved output; a split-K GEMM also clears its counters)
against eager ``F.dropout(F.relu(F.linear(...)))`` (cuBLAS, then two elementwise kernels and a
stored bool mask) and torch.compile of the same, forward and forward+backward (gradients of
input, weight and bias, as inside the network), in fp32 with IEEE arithmetic, TF32 and bf16.

nbytes is the floor (docs/kernels/linear.md): forward reads x, W and b and writes y; backward
reads dy, W, x (and the output for the ReLU/dropout mask) and writes dx, dW and db. At M = 128
the layers are weight-bandwidth-bound (fc6's weight alone is 75 MB in bf16). flops counts
2*M*N*K per product. The split-K workspace (fp32 partial tiles, written once and read once)
is not in nbytes: it is what filling the GPU costs, not part of the layer's floor.
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import compiled, run_benchmark

from fastalex.ops.linear import linear, linear_relu

P = 0.5
# name: (in_features, out_features, ReLU + dropout)
LAYERS = {
    "full": {"fc6": (9216, 4096, True), "fc7": (4096, 4096, True), "fc8": (4096, 1000, False)},
    "smoke": {"fc6": (72, 32, True), "fc7": (32, 32, True), "fc8": (32, 10, False)},
}
BATCH = {"full": 128, "smoke": 4}
# name: (dtype, TF32 allowed)
PRECISIONS = {"fp32": (torch.float32, False), "tf32": (torch.float32, True),
              "bf16": (torch.bfloat16, False)}
IMPLS = ("fastalex", "eager", "compile")
DIRECTIONS = ("fwd", "fwdbwd")


def _eager_relu_dropout(x, w, b):
    return F.dropout(F.relu(F.linear(x, w, b)), P, True)


def _fastalex_relu_dropout(x, w, b):
    return linear_relu(x, w, b, p=P, training=True)


CASES = [
    pytest.param(layer, precision, direction, impl, id=f"{layer}-{precision}-{direction}-{impl}")
    for layer in LAYERS["full"]
    for precision in PRECISIONS
    for direction in DIRECTIONS
    for impl in IMPLS
]


@pytest.mark.parametrize("layer, precision, direction, impl", CASES)
def test_linear(benchmark, bench_mode, bench_device, layer, precision, direction, impl):
    # Read at call time by cuBLAS and fastalex, at compile time by Inductor: set before both.
    # (monkeypatch cannot restore this attribute: torch.backends.cuda.matmul has no __dict__.)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = PRECISIONS[precision][1]
    try:
        _bench(benchmark, bench_mode, bench_device, layer, precision, direction, impl)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _bench(benchmark, bench_mode, bench_device, layer, precision, direction, impl):
    k, n, fused = LAYERS[bench_mode][layer]
    m = BATCH[bench_mode]
    dtype = PRECISIONS[precision][0]
    reference = _eager_relu_dropout if fused else F.linear
    ours = _fastalex_relu_dropout if fused else linear
    op = {"fastalex": ours, "eager": reference}.get(impl) or compiled(reference, bench_mode)

    g = torch.Generator(device=bench_device).manual_seed(0)
    x = torch.randn(m, k, device=bench_device, generator=g).relu_().to(dtype)  # ReLU outputs
    w = (torch.randn(n, k, device=bench_device, generator=g) * k**-0.5).to(dtype)
    b = torch.randn(n, device=bench_device, generator=g).to(dtype)
    elt = x.element_size()
    fwd_bytes = (m * k + n * k + n + m * n) * elt
    flops = 2.0 * m * n * k
    if direction == "fwd":
        def fn():
            return op(x, w, b)
    else:
        for t in (x, w, b):
            t.requires_grad_()
        dy = torch.randn(m, n, device=bench_device, generator=g).to(dtype)

        def fn():
            return torch.autograd.grad(op(x, w, b), (x, w, b), dy)

        # backward: read dy, W, x (+ the output, for the mask); write dx, dW, db
        fwd_bytes += (m * n + n * k + m * k + (m * n if fused else 0)
                      + m * k + n * k + n) * elt
        flops *= 3
    run_benchmark(
        benchmark, fn, bench_mode, nbytes=fwd_bytes, flops=flops,
        layer=layer, shape=[m, k, n], precision=precision, relu_dropout=fused,
        p=P if fused else 0.0, impl=impl, direction=direction,
    )
