"""Seeds for kernels that draw random numbers."""

import torch


def philox_seed(device: torch.device) -> torch.Tensor:
    """A fresh Philox seed, shape (1,) int64 on ``device``, drawn from torch's generator for that
    device: ``torch.manual_seed`` reproduces a run, consecutive calls differ, and the seed stays
    on the device (no host sync, CUDA-graph and ``torch.compile`` friendly)."""
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)
