"""Learning-rate schedules, built from torch's schedulers.

- :func:`plateau` (the paper, section 5): "divide the learning rate by 10 when the validation
  error rate stopped improving with the current learning rate", at most ``max_decays`` times.
  Stepped once per epoch with the validation top-1 error.
- :func:`warmup_cosine`: linear warm-up, then a half cosine to zero; stepped after every
  optimizer step.
- :func:`constant`: the lr as set (a scheduler all the same, so every checkpoint has one).
"""

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
)

# State that changes as a schedule runs; the rest of a state dict is the schedule's shape.
_PROGRESS = frozenset({
    "last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step",
    "best", "num_bad_epochs", "cooldown_counter", "verbose",
})


def plateau(optimizer: torch.optim.Optimizer, *, patience: int, max_decays: int,
            factor: float = 0.1, threshold: float = 1e-4) -> ReduceLROnPlateau:
    """Multiply every group's lr by ``factor`` when the monitored value (lower is better) has
    not improved by more than ``threshold`` (relative) for ``patience`` epochs; at most
    ``max_decays`` times.

    The cap is ReduceLROnPlateau's ``min_lr``: each group's lr multiplied by ``factor``
    ``max_decays`` times, in the same float operations as the decays themselves, so the last
    allowed decay lands on it exactly and a further one changes nothing (``eps=0``: a decay is
    never dropped for being small).
    """
    if max_decays < 0:
        raise ValueError(f"max_decays must be >= 0, got {max_decays!r}")
    min_lrs = []
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        for _ in range(max_decays):
            lr *= factor
        min_lrs.append(lr)
    return ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                             threshold=threshold, threshold_mode="rel", min_lr=min_lrs, eps=0.0)


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int,
                  warmup_steps: int) -> LRScheduler:
    """The lr rises linearly from lr/warmup_steps to lr over ``warmup_steps`` steps, then
    follows a half cosine to 0 at ``total_steps``. Step it after every optimizer step."""
    total_steps = max(1, total_steps)
    warmup_steps = min(max(0, warmup_steps), total_steps)
    # Steps 0 .. warmup_steps - 1 at lr * (step + 1) / warmup_steps; the cosine starts at lr.
    # Without warm-up the milestone is 0 and the linear part never runs: the scheduler keeps
    # the same structure, so resuming can compare it with the checkpoint's.
    warmup = LinearLR(optimizer, start_factor=1.0 / max(1, warmup_steps), end_factor=1.0,
                      total_iters=max(1, warmup_steps - 1))
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def constant(optimizer: torch.optim.Optimizer) -> LRScheduler:
    """The lr as set, throughout."""
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def per_step(scheduler) -> bool:
    """True for a schedule stepped after every optimizer step, False for one stepped once per
    epoch with the validation error (:func:`plateau`)."""
    return not isinstance(scheduler, ReduceLROnPlateau)


def shape_differences(current: dict, saved: dict) -> list[str]:
    """The settings in which two schedulers' state dicts differ, ignoring how far each has run
    (keys present in only one, e.g. from another torch version, are not compared)."""
    differences = []
    for key in sorted(current.keys() & saved.keys() - _PROGRESS):
        a, b = current[key], saved[key]
        if key == "_schedulers" and len(a) == len(b):  # SequentialLR: compare each part
            differences += [f"{key}[{i}].{name}" for i, (x, y) in enumerate(zip(a, b))
                            for name in shape_differences(x, y)]
        elif a != b:
            differences.append(key)
    return differences
