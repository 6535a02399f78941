"""Benchmark harness: two modes, one set of benchmark bodies.

- ``pytest bench/ --benchmark-only``: the real thing, on AlexNet's shapes at batch 128; needs
  CUDA (skips with "needs CUDA" otherwise). Each case is timed by pytest-benchmark with a CUDA
  synchronisation after every call, and by ``triton.testing.do_bench``, whose median goes into
  ``extra_info`` with the bandwidth, FLOP rate and peak memory.
- Any other run (a plain ``pytest``, as CI does): smoke mode. Each body runs once on tiny shapes,
  through the Triton interpreter on a CPU, so the benchmark code cannot rot.
- ``--benchmark-only`` without CUDA but with ``FASTALEX_BENCH_REHEARSE=1`` (``bench/gpu_check.sh
  DIR rehearse``): smoke shapes, and each case is recorded as the GPU run records it, with CPU
  timings marked as a rehearsal, so the GPU check's whole flow runs on a CPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastalex.kernels._runtime import INTERPRET  # noqa: E402

CUDA = torch.cuda.is_available() and not INTERPRET
REHEARSE = os.environ.get("FASTALEX_BENCH_REHEARSE", "0") == "1"

# Each torch.compile baseline recompiles one function per shape and dtype; past dynamo's default
# limit (8) it would silently fall back to eager and the table would compare against eager.
torch._dynamo.config.recompile_limit = 1024


@pytest.fixture(scope="session")
def bench_mode(request) -> str:
    """``"full"`` under ``--benchmark-only`` (CUDA required), else ``"smoke"``."""
    if request.config.getoption("benchmark_only", False):
        if CUDA:
            return "full"
        if not REHEARSE:
            pytest.skip("needs CUDA")
    return "smoke"


@pytest.fixture(scope="session")
def bench_device(bench_mode) -> str:
    return "cuda" if CUDA else "cpu"
