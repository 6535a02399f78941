"""Helpers shared by the tests (import as ``from helpers import ...``)."""

import torch

# Tolerances for comparing a kernel in `dtype` with the reference computed in float64 and
# rounded to `dtype`: about two units in the last place of each format.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-4),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3),
}


def tolerance(dtype: torch.dtype, **override) -> dict:
    """``assert_close`` keyword arguments for ``dtype``, with ``override`` applied."""
    return {**TOLERANCES[dtype], **override}


def config_id(config) -> str:
    """A short test id for a Triton configuration: its block sizes and warps."""
    blocks = "-".join(f"{k}{v}" for k, v in config.kwargs.items())
    return f"{blocks}-w{config.num_warps}"
