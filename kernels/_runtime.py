"""What every launcher shares: interpreter detection, autotuning policy, output allocation."""

import contextlib
import os

import torch
import triton

# Triton decides at decoration time whether @triton.jit builds GPU code or an interpreted
# function, from TRITON_INTERPRET; read it once, here, for the same answer everywhere.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Correctness runs use one configuration (the first of each list): autotuning under the
# interpreter costs minutes and tests must not depend on which configuration won.
AUTOTUNE = not INTERPRET and os.environ.get("FASTALEX_AUTOTUNE", "1") != "0"


def autotune(configs, key, **kwargs):
    """``triton.autotune`` over ``configs``, or over ``configs[0]`` alone when not tuning."""
    return triton.autotune(configs=list(configs) if AUTOTUNE else list(configs[:1]), key=key, **kwargs)


_poison = os.environ.get("FASTALEX_POISON", "0") == "1"


@contextlib.contextmanager
def poisoned_outputs(enabled: bool = True):
    """Fill every output a launcher allocates with NaN (-1 for integers) while active.

    Tests use it so that an element a kernel forgot to write cannot pass by luck.
    """
    global _poison
    previous, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = previous


def new_empty(shape, *, dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """``torch.empty``, NaN-filled under :func:`poisoned_outputs`."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if _poison:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def new_empty_like(t: torch.Tensor, **kwargs) -> torch.Tensor:
    """``torch.empty_like`` (keeping ``t``'s strides), NaN-filled under :func:`poisoned_outputs`."""
    out = torch.empty_like(t, **kwargs)
    if _poison:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def tf32_allowed(kind: str) -> bool:
    """Whether torch's switches allow TF32 for fp32 ``"conv"`` or ``"matmul"`` work."""
    if kind == "conv":
        return bool(torch.backends.cudnn.allow_tf32)
    return bool(torch.backends.cuda.matmul.allow_tf32)
