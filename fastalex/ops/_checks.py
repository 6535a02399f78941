"""Argument checks shared by the ops: they run before any kernel, and name the argument."""

import torch

from fastalex.ops._autocast import autocast_enabled

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t, *, min_dim: int = 0, dims=None) -> None:
    """``t`` must be a floating-point tensor (fp16, bf16, fp32, fp64) of the given rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )
    if dims is not None and t.dim() not in dims:
        want = " or ".join(str(d) for d in dims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(t.shape)}")
    if t.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimensions, got shape {tuple(t.shape)}"
        )


def check_same(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must share ``ref``'s dtype and device."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have {ref_name}'s dtype {ref.dtype}, got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def check_int(name: str, value, *, minimum: int) -> int:
    """``value`` must be an int (not a bool) no smaller than ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(name: str, value) -> float:
    """``value`` must be a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def pair(name: str, value, *, minimum: int) -> tuple:
    """An int or a pair of ints, each >= ``minimum``, as a 2-tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return tuple(check_int(name, v, minimum=minimum) for v in value)
    v = check_int(name, value, minimum=minimum)
    return (v, v)


def check_probability(name: str, p) -> float:
    """``p`` must be a number in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return float(p)


def check_parameters(input: torch.Tensor, weight: torch.Tensor, bias) -> None:
    """``weight`` and ``bias`` (optional) must be on ``input``'s device, and of its dtype unless
    autocast is on for that device (the op then casts them, as ``F.conv2d``/``F.linear`` do)."""
    mixed_ok = autocast_enabled(input.device.type)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != input.device:
            raise ValueError(f"{name} must be on input's device {input.device}, got {t.device}")
        if not mixed_ok:
            check_same(name, t, "input", input)
