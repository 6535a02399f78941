"""Convolution + bias + ReLU on AlexNet's five layers at batch 128: fastalex's
implicit GEMM against cuDNN (``F.relu(F.conv2d(...))`` eager) and torch.compile of the same,
forward and forward+backward, in fp32 with IEEE arithmetic, TF32 and bf16, channels-last input
and weight for every implementation.

flops = 2 * M * N * K for the forward (M = batch*OH*OW, N = Cout, K = Cin/groups*KH*KW); the
backward adds grad-input and grad-weight, another 2x, except for conv1 whose input (the image)
needs no gradient: 2x in all. nbytes is the floor: every tensor read or written once (the
backward also reads the saved output for the ReLU mask).
"""

import pytest
import torch
import torch.nn.functional as F
from benchutil import compiled, run_benchmark

from fastalex.ops.conv import conv2d_relu

# name: (cin, h, cout, k, stride, padding, groups); square images
LAYERS = {
    "full": {
        "conv1": (3, 227, 96, 11, 4, 0, 1),
        "conv2": (96, 27, 256, 5, 1, 2, 2),
        "conv3": (256, 13, 384, 3, 1, 1, 1),
        "conv4": (384, 13, 384, 3, 1, 1, 2),
        "conv5": (384, 13, 256, 3, 1, 1, 2),
    },
    "smoke": {  # the same geometry, scaled down for the interpreter
        "conv1": (3, 19, 8, 11, 4, 0, 1),
        "conv2": (8, 7, 8, 5, 1, 2, 2),
        "conv3": (8, 5, 8, 3, 1, 1, 1),
        "conv4": (8, 5, 8, 3, 1, 1, 2),
        "conv5": (8, 5, 8, 3, 1, 1, 2),
    },
}
BATCH = {"full": 128, "smoke": 1}
# name: (dtype, TF32 allowed)
PRECISIONS = {"fp32": (torch.float32, False), "tf32": (torch.float32, True),
              "bf16": (torch.bfloat16, False)}
IMPLS = ("fastalex", "cudnn", "compile")
DIRECTIONS = ("fwd", "fwdbwd")


def _cudnn(x, w, b, stride, padding, groups):
    return F.relu(F.conv2d(x, w, b, stride, padding, groups=groups))


def _fastalex(x, w, b, stride, padding, groups):
    return conv2d_relu(x, w, b, stride, padding, groups=groups)


CASES = [
    pytest.param(layer, precision, direction, impl,
                 id=f"{layer}-{precision}-{direction}-{impl}")
    for layer in LAYERS["full"]
    for precision in PRECISIONS
    for direction in DIRECTIONS
    for impl in IMPLS
]


@pytest.mark.parametrize("layer, precision, direction, impl", CASES)
def test_conv(benchmark, bench_mode, bench_device, layer, precision, direction, impl,
              monkeypatch):
    cin, h, cout, k, stride, padding, groups = LAYERS[bench_mode][layer]
    n = BATCH[bench_mode]
    dtype, tf32 = PRECISIONS[precision]
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    op = {"fastalex": _fastalex, "cudnn": _cudnn}.get(impl) or compiled(_cudnn, bench_mode)

    def make(*shape, scale=1.0):
        t = torch.randn(shape, device=bench_device, dtype=torch.float32) * scale
        return t.to(dtype)

    cl = torch.channels_last
    x = make(n, cin, h, h).contiguous(memory_format=cl)
    w = make(cout, cin // groups, k, k, scale=(cin // groups * k * k) ** -0.5)
    w = w.contiguous(memory_format=cl)
    b = make(cout)
    oh = (h + 2 * padding - k) // stride + 1
    m, kdim = n * oh * oh, cin // groups * k * k
    flops = 2.0 * m * cout * kdim
    size = x.element_size()
    x_bytes, y_bytes = x.numel() * size, m * cout * size
    wb_bytes = (w.numel() + b.numel()) * size
    input_grad = layer != "conv1"  # the image needs no gradient, as in training
    if direction == "fwd":
        def fn():
            return op(x, w, b, stride, padding, groups)

        nbytes = x_bytes + wb_bytes + y_bytes
    else:
        x.requires_grad_(input_grad)
        w.requires_grad_()
        b.requires_grad_()
        leaves = [t for t in (x, w, b) if t.requires_grad]
        dy = make(n, cout, oh, oh).contiguous(memory_format=cl)

        def fn():
            return torch.autograd.grad(op(x, w, b, stride, padding, groups), leaves, dy)

        flops *= 3 if input_grad else 2
        # forward, then read dy, y, x, w and write dw, db (and dx)
        nbytes = (x_bytes + wb_bytes + y_bytes) + (2 * y_bytes + x_bytes + 2 * wb_bytes)
        nbytes += x_bytes if input_grad else 0
    run_benchmark(
        benchmark, fn, bench_mode, nbytes=nbytes, flops=flops,
        layer=layer, shape=[n, cin, h, h], cout=cout, kernel=k, stride=stride,
        padding=padding, groups=groups, precision=precision, impl=impl,
        direction=direction, memory_format="channels_last",
    )
