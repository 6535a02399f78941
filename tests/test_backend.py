"""fastalex.backend: which implementation a tensor takes, the reference path's compute dtype,
and the log line. The interpreter switch is read once at import, so the tests set the module's
copy of it (as if TRITON_INTERPRET had been 1 or 0 at import)."""

import pytest
import torch

import fastalex
from fastalex import backend


@pytest.fixture(params=[True, False], ids=["interpreter", "no-interpreter"])
def interpret(request, monkeypatch):
    monkeypatch.setattr(backend, "INTERPRET", request.param)
    return request.param


def test_cpu(interpret):
    expected = backend.TRITON_INTERPRETER if interpret else backend.REFERENCE
    assert backend.kernel_path(torch.empty(2)) == expected
    assert backend.kernel_path("cpu") == expected
    assert backend.uses_triton(torch.empty(2)) == interpret


def test_cuda(interpret):
    """A device is enough (no CUDA needed to ask about one)."""
    expected = backend.TRITON_INTERPRETER if interpret else backend.TRITON
    assert backend.kernel_path(torch.device("cuda")) == expected
    assert backend.kernel_path("cuda:1") == expected
    assert backend.uses_triton("cuda")


def test_other_devices_take_the_reference(interpret):
    assert backend.kernel_path(torch.empty(2, device="meta")) == backend.REFERENCE
    assert backend.kernel_path("mps") == backend.REFERENCE
    assert not backend.uses_triton("meta")


def test_reference_ops_forces_the_reference_and_restores(interpret):
    with backend.reference_ops():
        assert backend.kernel_path("cuda") == backend.REFERENCE
        assert backend.kernel_path(torch.empty(1)) == backend.REFERENCE
        with backend.reference_ops():
            pass
        assert backend.kernel_path("cuda") == backend.REFERENCE  # nesting keeps it on
    assert backend.kernel_path("cuda") != backend.REFERENCE
    with pytest.raises(RuntimeError, match="inside"):
        with backend.reference_ops():
            raise RuntimeError("inside")
    assert backend.kernel_path("cuda") != backend.REFERENCE  # restored after an error too


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=str)
def test_reference_dtype(dtype):
    """fp16 and bf16 compute in fp32 off CUDA; everything else in its own dtype."""
    x = torch.empty(1, dtype=dtype)
    low = dtype in (torch.float16, torch.bfloat16)
    assert backend.reference_dtype(x) == (torch.float32 if low else dtype)
    assert backend.reference_dtype(torch.empty(1, dtype=dtype, device="meta")) == \
        (torch.float32 if low else dtype)


def test_describe(interpret):
    assert backend.describe("cuda") == (
        "cuda: Triton kernels through the interpreter (TRITON_INTERPRET=1; slow)" if interpret
        else "cuda: Triton kernels (GPU)")
    cpu = backend.describe(torch.device("cpu"))
    assert cpu.startswith("cpu: ")
    assert ("interpreter" in cpu) == interpret and ("reference" in cpu) != interpret
    with backend.reference_ops():
        assert backend.describe("cuda") == \
            "cuda: PyTorch reference ops (Triton needs CUDA or TRITON_INTERPRET=1)"


def test_package_exports():
    assert fastalex.kernel_path is backend.kernel_path
    assert fastalex.describe is backend.describe
    assert fastalex.reference_ops is backend.reference_ops
    assert fastalex.uses_triton is backend.uses_triton
