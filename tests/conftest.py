"""Test set-up: where the kernels run, NaN-poisoned outputs, tolerances by dtype.

Without a GPU the Triton kernels run through Triton's interpreter, which must be switched on
before triton is first imported: this file does it, so a plain ``pytest`` works everywhere.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Correctness runs use one kernel configuration: results must not depend on autotuning.
os.environ.setdefault("FASTALEX_AUTOTUNE", "0")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from fastalex.kernels._runtime import INTERPRET, poisoned_outputs  # noqa: E402

# Property tests: the same examples on every run (no database, no clock), so a failure
# reproduces and the suite's time is stable. Fixtures such as `device` hold no state that an
# example could leak into the next one.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CUDA = torch.cuda.is_available() and not INTERPRET

DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not INTERPRET, reason="needs TRITON_INTERPRET=1 to run the kernels on the CPU"
        ),
    ),
    pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs CUDA")),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every kernel test runs in the interpreter on the CPU and, when present, on CUDA."""
    return request.param


@pytest.fixture(autouse=True)
def _poison_kernel_outputs():
    """Launchers fill their outputs with NaN first: an element a kernel misses fails the test."""
    with poisoned_outputs():
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

