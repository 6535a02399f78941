"""Learning-rate schedules: the paper's manual decay, and warm-up + cosine for short runs.

- :class:`PlateauDecay` (the paper, section 5): "divide the learning rate by 10 when the
  validation error rate stopped improving with the current learning rate", three times in all.
  Like ``torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min", factor=0.1)`` on the validation
  top-1 error, plus a cap on the number of decays. Stepped once per epoch.
- :func:`warmup_cosine`: linear warm-up, then cosine decay to zero, stepped once per
  optimizer step. Used by the built-in dataset's short preset (see fastalex.presets).
- :func:`constant`: no schedule.
"""

import math

import torch


class PlateauDecay:
    """Multiply every group's lr by ``factor`` when the monitored value (lower is better) has not
    improved by more than ``threshold`` (relative) for ``patience`` epochs; at most ``max_decays``
    times. Call :meth:`step` once per epoch with the validation error."""

    per_step = False

    def __init__(self, optimizer: torch.optim.Optimizer, *, factor: float = 0.1,
                 patience: int = 5, max_decays: int = 3, threshold: float = 1e-4):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor!r}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience!r}")
        if max_decays < 0:
            raise ValueError(f"max_decays must be >= 0, got {max_decays!r}")
        self.optimizer = optimizer
        self.factor, self.patience, self.max_decays = factor, patience, max_decays
        self.threshold = threshold
        self.best = math.inf
        self.bad_epochs = 0
        self.decays = 0

    def step(self, value: float) -> bool:
        """Record one epoch's validation error; returns True when the lr was just divided."""
        if value < self.best * (1.0 - self.threshold):
            self.best, self.bad_epochs = value, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.patience or self.decays >= self.max_decays:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] *= self.factor
        self.decays += 1
        self.bad_epochs = 0
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "decays": self.decays}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.decays = state["decays"]


class _PerStep(torch.optim.lr_scheduler.LambdaLR):
    per_step = True


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr rises linearly from lr/warmup_steps to lr over ``warmup_steps`` steps, then follows a
    half cosine to 0 at ``total_steps``. Step it after every optimizer step."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return _PerStep(optimizer, factor)


def constant(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr as set, throughout (kept as a scheduler so checkpoints look alike)."""
    return _PerStep(optimizer, lambda step: 1.0)
