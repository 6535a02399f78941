"""What every launcher shares: interpreter detection, autotuning policy, output allocation,
the device facts tile choices depend on, and the precision rules of the GEMM kernels."""

import contextlib
import functools
import math
import os
import struct

import torch
import triton
import triton.language as tl

# Triton decides at decoration time whether @triton.jit builds GPU code or an interpreted
# function, from TRITON_INTERPRET; read it once, here, for the same answer everywhere.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Correctness runs use one configuration (the first of each list): autotuning under the
# interpreter costs minutes and tests must not depend on which configuration won.
AUTOTUNE = not INTERPRET and os.environ.get("FASTALEX_AUTOTUNE", "1") != "0"


def autotune(configs, key, **kwargs):
    """``triton.autotune`` over ``configs``, or over ``configs[0]`` alone when not tuning.

    The kernel keeps the whole list as ``all_configs`` (what a GPU's autotuner may pick), so
    that tests can run each one through :func:`pinned_config`.
    """
    tune = triton.autotune(configs=list(configs) if AUTOTUNE else list(configs[:1]), key=key,
                           **kwargs)

    def decorate(fn):
        kernel = tune(fn)
        kernel.all_configs = list(configs)
        return kernel

    return decorate


@contextlib.contextmanager
def pinned_configs(kernel, configs):
    """Inside the block, ``kernel`` (made by :func:`autotune`) chooses among ``configs`` only,
    whatever ``AUTOTUNE`` says: one configuration runs without benchmarking or pruning, several
    are tuned as on a GPU (``kernel.all_configs``: autotuning on). Launchers that size buffers
    from ``kernel.configs`` see the same list. Not thread-safe: for tests.

        for config in kernel.all_configs:
            with pinned_config(kernel, config):
                check(...)
    """
    saved = kernel.configs, kernel.cache
    kernel.configs, kernel.cache = list(configs), {}
    try:
        yield kernel
    finally:
        kernel.configs, kernel.cache = saved


def pinned_config(kernel, config):
    """:func:`pinned_configs` with one configuration: every launch inside the block runs it."""
    return pinned_configs(kernel, [config])


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


# Offsets at or above this need int64 index arithmetic.
INT32_LIMIT = 2**31

# The interpreter and CPU tensors have no SMs: launch heuristics size their grids as for an H100.
_DEFAULT_SMS = 132


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (132, an H100's, for non-CUDA devices)."""
    if device.type != "cuda" or INTERPRET:
        return _DEFAULT_SMS
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


def tf32_allowed(kind: str) -> bool:
    """Whether torch's switches allow TF32 for fp32 ``"conv"`` or ``"matmul"`` work."""
    if kind == "conv":
        return bool(torch.backends.cudnn.allow_tf32)
    return bool(torch.backends.cuda.matmul.allow_tf32)


def input_precision(dtype: torch.dtype, tf32: bool) -> str:
    """``tl.dot``'s ``input_precision`` for operands of ``dtype``: TF32 only for fp32 operands
    and only when allowed. Always pinned: a GPU's default for fp32 is TF32, whatever torch's
    switches say."""
    return "tf32" if dtype == torch.float32 and tf32 else "ieee"


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate ``dtype`` inputs in: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_accumulator(dtype: torch.dtype):
    """:func:`accumulator_dtype` as a Triton type, for a constexpr kernel argument."""
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of output tile ``tile`` in grouped order: GROUP_M row blocks sweep the
    column blocks together, so the column operand's blocks stay in L2 while they are shared."""
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (tile // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (tile % num_pid_in_group) % group_size_m
    pid_n = (tile % num_pid_in_group) // group_size_m
    return pid_m, pid_n


# An fp64 scalar for a kernel. Triton passes a Python float to a kernel as fp32, so a kernel
# that needs a scalar in fp64 takes it as three fp32 parts and adds them back in fp64.
_FP32_MAX = 3.4028234663852886e38


def fp32_parts(value: float) -> tuple:
    """``value`` as three floats, each exact in fp32, whose sum is ``value``: hi = value rounded
    to fp32, mid = the remainder rounded to fp32, lo = what is left (at most 5 significant bits,
    since fp64 has 53 = 24 + 24 + 5). Exact for 2**-96 <= |value| <= fp32's largest finite
    value; beyond that range, hi is +-inf and mid = lo = 0. Kernels rebuild the value with
    :func:`from_fp32_parts`."""
    value = float(value)
    if not math.isfinite(value) or abs(value) > _FP32_MAX:
        return (math.copysign(math.inf, value) if not math.isnan(value) else value, 0.0, 0.0)
    parts = []
    for _ in range(3):
        part = struct.unpack("f", struct.pack("f", value))[0]  # round to nearest fp32
        parts.append(part)
        value -= part  # exact in fp64: the rounding error of a narrower format
    return tuple(parts)


@triton.jit
def from_fp32_parts(hi, mid, lo, ACC: tl.constexpr):
    """The scalar :func:`fp32_parts` split, in ``ACC``: the exact sum in fp64, ``hi`` (the
    value rounded to fp32) otherwise. The parts do not overlap, so the fp64 sum is exact."""
    if ACC == tl.float64:
        return tl.cast(hi, tl.float64) + tl.cast(mid, tl.float64) + tl.cast(lo, tl.float64)
    else:
        return tl.cast(hi, tl.float32)
