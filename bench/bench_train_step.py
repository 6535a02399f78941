"""A whole AlexNet training step: forward, cross-entropy, backward and the SGD update (the
paper's momentum 0.9 and weight decay 5e-4), batch 128 at 227 px on synthetic data already on
the GPU, dropout active.

The same network with the same weights, five ways:
- ``eager``: plain torch.nn (cuDNN), step by step;
- ``compile``: torch.compile of the torch.nn build (Inductor, default mode);
- ``compile-ro``: the same in ``mode="reduce-overhead"`` (Inductor's CUDA graphs);
- ``fastalex``: fastalex's fused Triton kernels, step by step;
- ``fastalex-graph``: the same, the whole step (optimizer included) replayed as one CUDA graph
  (``fastalex.training.graphed_step``, what ``python -m fastalex.train --cuda-graph`` runs).
The optimizer step stays eager in the compiled builds. fp32 and bf16 autocast, contiguous (NCHW)
and channels-last. ``extra_info`` holds images_per_s; peak_mib, the peak of
``torch.cuda.max_memory_allocated`` over one step, weights, gradients and momentum included
(identical in every build, so differences are activations and workspaces); and host_ms beside
do_bench_ms: the time for ``step()`` to return to Python without synchronising (the host's
share) beside the step's median on the GPU.

Smoke mode (no CUDA): each case runs one step at 67 px, batch 2, on the CPU, the fastalex builds
on the PyTorch reference ops: through Triton's interpreter one step takes minutes (fc7's
4096x4096 GEMMs), and the kernels have their own tests and benchmarks (tests/test_model.py runs
the whole network through them once). The CUDA-graph case needs CUDA.
"""

import contextlib
import time

import pytest
import torch
import torch.nn.functional as F
from benchutil import compiled, run_benchmark

import fastalex
from fastalex.models import alexnet
from fastalex.models.alexnet import feature_size
from fastalex.training.graphed_step import GraphedStep

SIZES = {"full": dict(batch=128, image=227, classes=1000),
         "smoke": dict(batch=2, image=67, classes=10)}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
LAYOUTS = ("nchw", "cl")
IMPLS = ("fastalex", "fastalex-graph", "eager", "compile", "compile-ro")

CASES = [
    pytest.param(dtype, layout, impl, id=f"step-{dtype}-{layout}-{impl}")
    for dtype in DTYPES
    for layout in LAYOUTS
    for impl in IMPLS
]


def step_flops(batch: int, image: int, classes: int) -> float:
    """Forward matmul FLOPs of the network (2 per multiply-add) x 3 for forward + backward."""
    side = (image - 11) // 4 + 1
    flops = 2 * side * side * 96 * 3 * 11 * 11
    s2 = (side - 3) // 2 + 1
    flops += 2 * s2 * s2 * 256 * 48 * 25
    s3 = (s2 - 3) // 2 + 1
    flops += 2 * s3 * s3 * (384 * 256 * 9 + 384 * 192 * 9 + 256 * 192 * 9)
    f = feature_size(image)
    flops += 2 * (256 * f * f * 4096 + 4096 * 4096 + 4096 * classes)
    return 3.0 * flops * batch


def make_step(impl: str, dtype: str, layout: str, size: dict, device: str, mode: str):
    """(one training step as a no-argument function, the model)."""
    torch.manual_seed(0)
    model = alexnet(size["classes"], image_size=size["image"],
                    impl="fastalex" if impl.startswith("fastalex") else "torch").to(device)
    memory_format = torch.channels_last if layout == "cl" else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    # fused: the trainer's update (fastalex.training.builders.build_optimizer), the same in all three builds
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4,
                                fused=True)
    forward = model
    if impl.startswith("compile"):
        forward = compiled(model, mode, "reduce-overhead" if impl == "compile-ro" else "default")
    x = torch.randn(size["batch"], 3, size["image"], size["image"], device=device) * 50
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, size["classes"], (size["batch"],), device=device)
    amp = DTYPES[dtype]
    if impl == "fastalex-graph":
        graphed = GraphedStep(model, optimizer, x, y, amp_dtype=amp)
        return (lambda: graphed(x, y)[0]), model

    def step():
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step, model


def host_ms(step, steps: int = 20) -> float:
    """Median time for ``step()`` to return, unsynchronised: the host's cost of one step (when
    it exceeds the GPU's, the GPU waits on the host)."""
    step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        torch.cuda.synchronize()  # an empty queue for the next call: only the host's work counts
    return sorted(times)[steps // 2] * 1e3


def peak_memory_mib(step) -> float:
    """``max_memory_allocated`` over one step, after a warm-up step (autotuning, compilation and
    the optimizer's momentum buffers happen there)."""
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


@pytest.mark.parametrize("dtype, layout, impl", CASES)
def test_train_step(benchmark, bench_mode, bench_device, dtype, layout, impl):
    if impl in ("fastalex-graph", "compile-ro") and bench_device != "cuda":
        pytest.skip("needs CUDA (CUDA graphs)")
    size = SIZES[bench_mode]
    paths = contextlib.nullcontext() if bench_mode == "full" else fastalex.reference_ops()
    with paths:
        step, model = make_step(impl, dtype, layout, size, bench_device, bench_mode)
        info = dict(batch=size["batch"], image=size["image"], dtype=dtype, layout=layout,
                    impl=impl, parameters=sum(p.numel() for p in model.parameters()),
                    kernels=fastalex.kernel_path(next(model.parameters()))
                    if impl.startswith("fastalex") else "torch")
        if bench_mode == "full":
            info["peak_mib"] = peak_memory_mib(step)
            info["host_ms"] = host_ms(step)
        run_benchmark(benchmark, step, bench_mode, flops=step_flops(**size),
                      images=size["batch"], **info)
