"""A whole training step (forward, loss, backward, optimizer step) as one CUDA graph.

AlexNet's step launches some 90 kernels; on a modern GPU the host takes about as long to launch
them as the GPU takes to run them. Captured once and replayed, the step costs one launch.

The rules a replayed step relies on:
- fixed shapes: the batch is copied into static input buffers, and the loss and logits are
  static outputs, overwritten by every replay (:class:`GraphedTrainStep` runs a batch of any
  other shape eagerly);
- the learning rate is read from one device tensor per parameter group, captured in place of
  the group's lr. The param groups keep their Python floats, which torch's schedulers update as
  in an eager run (in double precision, saved as floats in checkpoints); each replay first
  copies a changed value into the tensor (a fill, no host synchronisation);
- every op is capturable (no host synchronisation) and draws its random numbers through torch's
  CUDA generator, whose Philox offset advances on every replay (fresh dropout masks);
- warm-up and capture run real steps; the parameters, buffers, optimizer state and the RNG
  states are restored afterwards in place (the graph holds their addresses), so the first
  replay is exactly the step an eager run would take next, dropout mask included.
"""

import torch
import torch.nn.functional as F

# Optimizers whose state, zero-filled, equals their state before the first step (SGD's momentum
# with dampening 0 starts as the first gradient either way; Adam's moments and step count at 0).
_RESTARTABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def check_optimizer(optimizer) -> None:
    """A ValueError unless ``optimizer`` can be captured and restarted: SGD needs its fused
    kernel (the foreach path reads a tensor lr on the host), Adam/AdamW take any implementation
    (their capturable path is switched on for the capture)."""
    if not isinstance(optimizer, _RESTARTABLE):
        raise ValueError(f"a CUDA-graph step supports {[c.__name__ for c in _RESTARTABLE]}, "
                         f"got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.SGD) \
            and not all(group.get("fused") for group in optimizer.param_groups):
        raise ValueError("a CUDA-graph step needs SGD(fused=True): the foreach SGD reads a "
                         "tensor learning rate on the host")


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
        device = images.device
        if device.type != "cuda":
            raise ValueError(f"a CUDA-graph step needs CUDA tensors, got images on {device}")
        check_optimizer(optimizer)
        self.model, self.optimizer, self.amp_dtype = model, optimizer, amp_dtype
        groups = optimizer.param_groups
        self._lr_values = [group["lr"] for group in groups]
        self._lrs = [torch.tensor(float(lr), dtype=torch.float32, device=device)
                     for lr in self._lr_values]
        self.images = images.detach().clone(memory_format=torch.preserve_format)
        self.targets = targets.detach().clone()

        _steps_on_device(optimizer)
        saved = _Snapshot(model, optimizer, device)
        flags = [(group["lr"], group.get("capturable")) for group in groups]
        for group, lr in zip(groups, self._lrs):
            group["lr"] = lr
            if "capturable" in group:  # Adam/AdamW: the path without host syncs
                group["capturable"] = True
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: autotuning, compiles, lazy optimizer state
                for _ in range(warmup):
                    self._step()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)  # gradients get allocated in the graph's pool
            # thread_local: the DataLoader's pin-memory thread keeps calling CUDA meanwhile
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.loss, self.logits = self._step()
        finally:
            for group, (lr, capturable) in zip(groups, flags):
                group["lr"] = lr
                if capturable is not None:
                    group["capturable"] = capturable
        saved.restore(model, optimizer)

    def _step(self):
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None, cache_enabled=False):
            logits = self.model(self.images)
            loss = F.cross_entropy(logits, self.targets)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def accepts(self, images: torch.Tensor, targets: torch.Tensor) -> bool:
        """Whether a batch has the captured shapes, dtypes and device."""
        return all(a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
                   for a, b in ((images, self.images), (targets, self.targets)))

    def __call__(self, images: torch.Tensor, targets: torch.Tensor):
        if not self.accepts(images, targets):
            raise ValueError(f"a CUDA-graph step runs batches of {tuple(self.images.shape)} "
                             f"{self.images.dtype} on {self.images.device}, got "
                             f"{tuple(images.shape)} {images.dtype} on {images.device}")
        for i, group in enumerate(self.optimizer.param_groups):
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):  # a tensor lr set by the caller: copied on device
                self._lrs[i].copy_(lr)
            elif lr != self._lr_values[i]:
                self._lrs[i].fill_(lr)
                self._lr_values[i] = lr
        self.images.copy_(images, non_blocking=True)
        self.targets.copy_(targets, non_blocking=True)
        self.graph.replay()
        return self.loss, self.logits


class GraphedTrainStep:
    """The training step of ``--cuda-graph``: captured (:class:`GraphedStep`) at the first batch
    of ``batch_size`` images, replayed for every batch like it; any other batch (one that lost
    unreadable images) goes to ``eager``, a callable ``(images, targets, weight) -> (loss,
    logits)`` over the same model and optimizer (``weight`` != 1 also runs eagerly)."""

    def __init__(self, model, optimizer, eager, *, batch_size: int, amp_dtype=None, warmup=3):
        check_optimizer(optimizer)
        self.model, self.optimizer, self.eager = model, optimizer, eager
        self.batch_size, self.amp_dtype, self.warmup = batch_size, amp_dtype, warmup
        self.graphed = None

    def __call__(self, images, targets, weight=1.0):
        if weight == 1.0 and self.graphed is None and images.shape[0] == self.batch_size:
            self.graphed = GraphedStep(self.model, self.optimizer, images, targets,
                                       amp_dtype=self.amp_dtype, warmup=self.warmup)
        if weight == 1.0 and self.graphed is not None and self.graphed.accepts(images, targets):
            return self.graphed(images, targets)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        static = [p.grad for p in params]  # the graph's gradients (None before the capture)
        out = self.eager(images, targets, weight)
        for p, grad in zip(params, static):  # the eager ones are freed
            p.grad = grad
        return out


def _steps_on_device(optimizer) -> None:
    """Adam's step counts on their parameter's device (a non-capturable Adam keeps them on the
    CPU; a capturable one, which the capture runs, needs them beside the parameters)."""
    for p, state in optimizer.state.items():
        step = state.get("step")
        if isinstance(step, torch.Tensor) and step.device != p.device:
            state["step"] = step.to(device=p.device, dtype=torch.float32)


class _Snapshot:
    """Copies of the parameters, buffers, optimizer state and RNG states, to put back in place
    after the warm-up; optimizer state the warm-up created goes to zero (its value before any
    step, for the optimizers in _RESTARTABLE)."""

    def __init__(self, model, optimizer, device):
        tensors = [*model.parameters(), *model.buffers()]
        self.tensors = [(t, t.detach().clone()) for t in tensors]
        self.state = {p: {k: (v, v.detach().clone() if isinstance(v, torch.Tensor) else v)
                          for k, v in state.items()}
                      for p, state in optimizer.state.items()}
        self.device = device
        self.rng = torch.get_rng_state(), \
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self, model, optimizer) -> None:
        with torch.no_grad():
            for t, saved in self.tensors:
                t.copy_(saved)
            for p, state in optimizer.state.items():
                before = self.state.get(p, {})
                for key, value in state.items():
                    if key in before:
                        original, saved = before[key]
                        if not isinstance(value, torch.Tensor):
                            if value != saved:
                                raise RuntimeError(f"the optimizer changed its non-tensor "
                                                   f"state {key!r} during the warm-up: it "
                                                   "cannot be captured")
                        elif original is not value:
                            raise RuntimeError(f"the optimizer replaced its state {key!r} "
                                               "during the warm-up: it cannot be captured")
                        else:
                            value.copy_(saved)
                    elif isinstance(value, torch.Tensor):
                        value.zero_()
                    else:
                        raise RuntimeError(f"the optimizer created the non-tensor state "
                                           f"{key!r} during the warm-up: it cannot be captured")
        torch.set_rng_state(self.rng[0])
        if self.rng[1] is not None:
            torch.cuda.set_rng_state(self.rng[1], self.device)
