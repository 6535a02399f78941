"""Data-parallel training across processes with PyTorch's own engine (DDP under ``torchrun``).

``torchrun --nproc_per_node=N -m fastalex.train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`init` turns them into a process group (NCCL for CUDA devices, gloo for CPUs), and the
rest are the few collectives the training loop needs. Without those variables everything is one
process. Commands join and leave the group through :func:`fastalex.training.startup.session`.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, GPU ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 prints and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (a no-op for a single process)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                    int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values, info: DistInfo, device) -> list:
    """Sum each number in ``values`` over all ranks (float64: exact for counts and sums)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: float, info: DistInfo, device) -> float:
    """The largest ``value`` over all ranks (wall time of an epoch is the slowest rank's)."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def all_reduce_min(value: float, info: DistInfo, device) -> float:
    """The smallest ``value`` over all ranks."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.item()


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def parameters_in_sync(model: torch.nn.Module, info: DistInfo) -> bool:
    """True when every rank holds exactly rank 0's parameters and buffers (bit for bit).

    DDP keeps replicas equal by averaging gradients; this checks that it did, at the cost of one
    broadcast of the model, so the training loop runs it once at the end of a distributed run.
    """
    if not info.enabled:
        return True
    mismatch = 0.0
    for tensor in list(model.parameters()) + list(model.buffers()):
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        if not torch.equal(reference, tensor.detach()):
            mismatch = 1.0
    flag = torch.tensor([mismatch], device=next(model.parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item() == 0.0
