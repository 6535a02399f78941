"""Autocast for the GEMM ops, which torch's autocast does not know about."""

import torch


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for device types autocast does not
    know (``meta``, for one, where torch raises)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def autocast_cast(device_type: str, *tensors, memory_format_4d=torch.preserve_format):
    """Cast like autocast does for ``F.conv2d`` and ``F.linear``: while autocast is on for
    ``device_type``, floating tensors other than fp64 go to the autocast dtype (4-D ones into
    ``memory_format_4d`` in the same copy); ``None`` passes through."""
    if not autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        if t is None or t.dtype in (dtype, torch.float64):
            return t
        fmt = memory_format_4d if t.dim() == 4 else torch.preserve_format
        return t.to(dtype=dtype, memory_format=fmt)

    return tuple(cast(t) for t in tensors)
