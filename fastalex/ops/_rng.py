"""Seeds for kernels that draw random numbers."""

import torch


def philox_seed(device: torch.device) -> torch.Tensor:
    """A fresh Philox seed, shape (1,) int64 on ``device``, drawn by ``torch.randint`` from torch's
    default generator for that device: ``torch.manual_seed`` reproduces a run, consecutive calls
    differ, and the seed never leaves the device (no host sync).

    Under CUDA-graph capture this stays correct because ``randint`` is itself capture-safe: the
    CUDA generator gives its kernel a pointer to a device-side Philox offset (torch's "CUDA
    Graph-safe RNG states"), which every replay refills from the generator's current offset and
    then advances by the graph's total use. So each replay draws a new seed, hence a new mask,
    and a replay after ``torch.manual_seed(s)`` draws what an eager step after it would."""
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)
