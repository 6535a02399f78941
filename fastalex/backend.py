"""Which implementation a tensor takes: Triton on a GPU or in the interpreter, else PyTorch.

- ``"triton"``: CUDA tensors run the Triton kernels.
- ``"triton-interpreter"``: with ``TRITON_INTERPRET=1`` (set before triton is imported) the same
  kernels run on the CPU through Triton's interpreter. Slow; meant for tests.
- ``"reference"``: everything else (CPU tensors, other devices, no triton) runs plain PyTorch ops,
  so every layer works in any model on any device.
"""

import contextlib

import torch

try:
    from fastalex.kernels._runtime import INTERPRET

    HAS_TRITON = True
except ImportError:  # no triton for this platform: reference ops only
    INTERPRET, HAS_TRITON = False, False

TRITON = "triton"
TRITON_INTERPRETER = "triton-interpreter"
REFERENCE = "reference"


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


def kernel_path(tensor: torch.Tensor) -> str:
    """The implementation fastalex's ops use for ``tensor``: one of the three names above."""
    if _forced_reference or not HAS_TRITON:
        return REFERENCE
    if INTERPRET and tensor.device.type in ("cpu", "cuda"):
        return TRITON_INTERPRETER
    if tensor.device.type == "cuda":
        return TRITON
    return REFERENCE


def uses_triton(tensor: torch.Tensor) -> bool:
    """True when ``tensor`` goes through the Triton kernels (on a GPU or interpreted)."""
    return kernel_path(tensor) != REFERENCE


def describe(device) -> str:
    """One line for logs: which kernels run on ``device``."""
    path = kernel_path(torch.empty(0, device=device))
    what = {
        TRITON: "Triton kernels (GPU)",
        TRITON_INTERPRETER: "Triton kernels through the interpreter (TRITON_INTERPRET=1; slow)",
        REFERENCE: "PyTorch reference ops (Triton needs CUDA or TRITON_INTERPRET=1)",
    }[path]
    return f"{torch.device(device)}: {what}"
