"""fastalex.training.schedules: the paper's plateau decay and warm-up + cosine, as torch
schedulers."""

import math
import warnings

import pytest
import torch

from fastalex.training import schedules
from fastalex.training.schedules import plateau, warmup_cosine


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def test_plateau_decay_divides_by_ten_at_most_three_times():
    opt = _optimizer(0.01)
    sched = plateau(opt, patience=2, max_decays=3)
    history = []
    for error in [0.9, 0.8, 0.8, 0.8, 0.8] + [0.8] * 12:
        sched.step(error)
        history.append(opt.param_groups[0]["lr"])
    # improvement at epochs 1-2, then 2 epochs of patience, then a decay every 3rd epoch
    assert history[:5] == [0.01, 0.01, 0.01, 0.01, pytest.approx(0.001)]
    assert history[-1] == pytest.approx(1e-5)  # three decays, then no more
    decays = sum(after < before for before, after in zip([0.01] + history, history))
    assert decays == 3
    again = plateau(opt, patience=2, max_decays=3)
    again.load_state_dict(sched.state_dict())
    assert again.state_dict() == sched.state_dict()


@pytest.mark.parametrize("lr", [0.01, 3e-4, 1.0, 7e-9])
@pytest.mark.parametrize("max_decays", [0, 1, 3, 5])
def test_plateau_cap_is_exact(lr, max_decays):
    """min_lr = lr * 0.1**N in the decays' own float operations: exactly N decays, each the
    exact product, at any lr (eps=0, so even lrs below 1e-8 decay)."""
    opt = _optimizer(lr)
    sched = plateau(opt, patience=0, max_decays=max_decays)
    expected, lrs = [lr], []
    for _ in range(max_decays):
        expected.append(expected[-1] * 0.1)
    sched.step(1.0)  # the first value is an improvement on inf
    for _ in range(max_decays + 4):
        sched.step(1.0)  # never better: a decay after each epoch while allowed
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:max_decays] == expected[1:]  # bit for bit
    assert lrs[max_decays:] == [expected[-1]] * 4


def test_plateau_threshold_is_relative():
    opt = _optimizer(1.0)
    sched = plateau(opt, patience=0, max_decays=3, threshold=0.1)
    sched.step(0.5)
    sched.step(0.46)  # 8% better: not better than 0.5 * (1 - 0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    sched.step(0.40)  # 20% better than the best, 0.5: an improvement, no decay
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_warmup_cosine_shape():
    opt = _optimizer(1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 0.05


@pytest.mark.parametrize("total,warmup", [(10, 2), (7, 0), (5, 1), (9, 4), (3, 3)])
def test_warmup_cosine_values(total, warmup):
    """lr * (step + 1) / warmup during the warm-up, then 0.5 * (1 + cos(pi * t / (total -
    warmup))); no warning from torch at the milestone."""
    opt = _optimizer(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = warmup_cosine(opt, total_steps=total, warmup_steps=warmup)
        lrs = []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    cosine = max(1, total - warmup)
    expected = [0.2 * (k + 1) / warmup if k < warmup
                else 0.2 * 0.5 * (1 + math.cos(math.pi * (k - warmup) / cosine))
                for k in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_constant_and_per_step():
    opt = _optimizer(0.3)
    sched = schedules.constant(opt)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.3
    assert schedules.per_step(sched)
    assert schedules.per_step(warmup_cosine(_optimizer(1.0), total_steps=4, warmup_steps=1))
    assert not schedules.per_step(plateau(_optimizer(1.0), patience=1, max_decays=1))


def test_shape_differences_ignore_progress_only():
    def cosine(total, lr=1.0):
        return warmup_cosine(_optimizer(lr), total_steps=total, warmup_steps=2)

    a, b = cosine(10), cosine(10)
    for _ in range(4):
        a.optimizer.step()
        a.step()
    assert schedules.shape_differences(a.state_dict(), b.state_dict()) == []
    assert schedules.shape_differences(cosine(12).state_dict(), b.state_dict()) == \
        ["_schedulers[1].T_max"]
    assert "_schedulers[0].base_lrs" in schedules.shape_differences(
        cosine(10, lr=0.5).state_dict(), b.state_dict())
    p2, p5 = (plateau(_optimizer(1.0), patience=n, max_decays=3) for n in (2, 5))
    p2.step(0.5)
    assert schedules.shape_differences(p2.state_dict(), p5.state_dict()) == ["patience"]
    assert schedules.shape_differences(
        plateau(_optimizer(1.0), patience=2, max_decays=2).state_dict(),
        p5.state_dict()) == ["min_lrs", "patience"]
