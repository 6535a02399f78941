"""Which implementation a tensor takes: Triton on a GPU or in the interpreter, else PyTorch.

- ``"triton"``: CUDA tensors run the Triton kernels.
- ``"triton-interpreter"``: with ``TRITON_INTERPRET=1`` (set before triton is imported) the same
  kernels run on the CPU through Triton's interpreter. Slow; meant for tests.
- ``"reference"``: everything else (CPU tensors without the interpreter, other devices, and any
  tensor inside :func:`reference_ops`) runs plain PyTorch ops. Triton is still imported: it is
  a dependency of the package.
"""

import contextlib

import torch

from fastalex.kernels._runtime import INTERPRET

TRITON = "triton"
TRITON_INTERPRETER = "triton-interpreter"
REFERENCE = "reference"

# Devices whose tensors the interpreter runs (it reads and writes them from the host).
_INTERPRETED = ("cpu", "cuda")

_forced_reference = False


@contextlib.contextmanager
def reference_ops():
    """Run every fastalex op on the plain PyTorch reference inside the block, whatever the device
    (for A/B comparisons, and for tests that train on the CPU without the slow interpreter)."""
    global _forced_reference
    previous, _forced_reference = _forced_reference, True
    try:
        yield
    finally:
        _forced_reference = previous


def kernel_path(where) -> str:
    """The implementation fastalex's ops use for a tensor on ``where`` (a tensor, a
    ``torch.device`` or a device string): one of the three names above."""
    device = where.device if isinstance(where, torch.Tensor) else torch.device(where)
    if _forced_reference:
        return REFERENCE
    if INTERPRET and device.type in _INTERPRETED:
        return TRITON_INTERPRETER
    if device.type == "cuda":
        return TRITON
    return REFERENCE


def uses_triton(where) -> bool:
    """True when a tensor on ``where`` goes through the Triton kernels (on a GPU or
    interpreted)."""
    return kernel_path(where) != REFERENCE


def reference_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype the reference path computes ``tensor``'s op in: its own on CUDA and for
    fp32/fp64; fp32 for fp16 and bf16 elsewhere, where torch lacks some of their kernels (the
    CPU has no fp16/bf16 ``avg_pool3d``, which ``local_response_norm`` runs on). The ops round the
    result back to ``tensor``'s dtype once."""
    if tensor.device.type != "cuda" and tensor.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return tensor.dtype


def describe(device) -> str:
    """One line for logs: which kernels run on ``device``."""
    what = {
        TRITON: "Triton kernels (GPU)",
        TRITON_INTERPRETER: "Triton kernels through the interpreter (TRITON_INTERPRET=1; slow)",
        REFERENCE: "PyTorch reference ops (Triton needs CUDA or TRITON_INTERPRET=1)",
    }[kernel_path(device)]
    return f"{torch.device(device)}: {what}"
