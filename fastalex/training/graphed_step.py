"""A whole training step (forward, loss, backward, optimizer step) as one CUDA graph.

AlexNet's step launches some 90 kernels; on a modern GPU the host takes about as long to launch
them as the GPU takes to run them. Captured once and replayed, the step costs one launch.

The rules a replayed step relies on:
- fixed shapes: the batch is copied into static input buffers (the loop drops the last, short
  batch), and the loss and logits are static outputs, overwritten by every replay;
- the learning rate lives in a device tensor per parameter group, which torch's schedulers
  update in place (``fill_``), so every replay reads the current one;
- every op is capturable (no host synchronisation) and draws its random numbers through torch's
  CUDA generator, whose Philox offset advances on every replay (fresh dropout masks);
- warm-up and capture run real steps; the parameters, buffers and optimizer state are restored
  afterwards in place (the graph holds their addresses), so the first replay is the run's first
  step, exactly as an eager step would be.
"""

import torch
import torch.nn.functional as F

# Optimizers whose state, zero-filled, equals their state before the first step (SGD's momentum
# with dampening 0 starts as the first gradient either way; Adam's moments and step count at 0).
_RESTARTABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


class GraphedStep:
    """``step(images, targets) -> (loss, logits)``: one training step by graph replay.

    images: [B, C, H, W] and targets: [B] int64, on the model's CUDA device, of the shapes given
    at construction (``images`` keeps its memory format). ``amp_dtype``: the autocast dtype
    (bf16; fp16 needs a GradScaler, whose inf check syncs the host, so it is refused) or None.
    The returned tensors are the graph's static outputs: read them before the next call.
    """

    def __init__(self, model, optimizer, images, targets, *, amp_dtype=None, warmup=3):
        if amp_dtype == torch.float16:
            raise ValueError("a CUDA-graph step cannot run fp16 autocast: its GradScaler "
                             "synchronises the host on every step (use bf16)")
        if not isinstance(optimizer, _RESTARTABLE):
            raise ValueError(f"a CUDA-graph step supports {[c.__name__ for c in _RESTARTABLE]}, "
                             f"got {type(optimizer).__name__}")
        device = images.device
        if device.type != "cuda":
            raise ValueError(f"a CUDA-graph step needs CUDA tensors, got images on {device}")
        self.model, self.optimizer, self.amp_dtype = model, optimizer, amp_dtype
        self._lrs = _lr_tensors(optimizer, device)
        self.images = images.detach().clone(memory_format=torch.preserve_format)
        self.targets = targets.detach().clone()

        saved = _snapshot(model, optimizer)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up: autotuning, compiles, lazy optimizer state
            for _ in range(warmup):
                self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # gradients get allocated in the graph's pool
        with torch.cuda.graph(self.graph):
            self.loss, self.logits = self._step()
        _restore(model, optimizer, saved)

    def _step(self):
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None, cache_enabled=False):
            logits = self.model(self.images)
            loss = F.cross_entropy(logits, self.targets)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor):
        if images.shape != self.images.shape or targets.shape != self.targets.shape:
            raise ValueError(f"a CUDA-graph step runs batches of {tuple(self.images.shape)}, "
                             f"got {tuple(images.shape)}")
        for group, lr in zip(self.optimizer.param_groups, self._lrs):
            if group["lr"] is not lr:
                raise RuntimeError("the optimizer's lr tensor was replaced; a replayed step "
                                   "reads the captured one (update it in place)")
        self.images.copy_(images, non_blocking=True)
        self.targets.copy_(targets, non_blocking=True)
        self.graph.replay()
        return self.loss, self.logits


def _lr_tensors(optimizer, device) -> list:
    """Each group's lr as a device tensor (created once; schedulers then fill it in place)."""
    lrs = []
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        lrs.append(group["lr"])
    return lrs


def _state_tensors(model, optimizer):
    yield from model.parameters()
    yield from model.buffers()
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def _snapshot(model, optimizer) -> dict:
    return {id(t): t.detach().clone() for t in _state_tensors(model, optimizer)}


def _restore(model, optimizer, saved: dict) -> None:
    """Every tensor back to its snapshot, in place; optimizer state the warm-up created goes to
    zero (its value before any step, for the optimizers in _RESTARTABLE)."""
    with torch.no_grad():
        for t in _state_tensors(model, optimizer):
            if id(t) in saved:
                t.copy_(saved[id(t)])
            else:
                t.zero_()
