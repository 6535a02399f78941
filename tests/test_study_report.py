"""fastalex.training.study.report and measures on made-up runs: each table row's numbers,
interval and verdict, runs that never reached 25% training error, the cited plots."""

import math
import random

import pytest

from fastalex.training.study import claims, measures, report, statistics


def _history(val_errors, train_errors, steps_per_epoch=10):
    return [{"epoch": i + 1, "step": (i + 1) * steps_per_epoch, "val_top1_error": v,
             "train_top1_error": t, "train_loss": 1.0}
            for i, (v, t) in enumerate(zip(val_errors, train_errors))]


def _result(label, seed, history):
    return {"label": label, "seed": seed, "history": history}


def _runs(arms: dict) -> dict:
    """arm name -> {seed: history} as Study.run returns it."""
    return {name: {"results": {s: _result(name, s, h) for s, h in per_seed.items()},
                   "point": {}, "grid": []} for name, per_seed in arms.items()}


def _claim(name):
    return claims.select([name])[0]


def test_a_difference_row():
    rng = random.Random(4)
    base = [rng.uniform(0.3, 0.5) for _ in range(3)]
    delta = [0.02 + rng.uniform(0, 0.01) for _ in range(3)]  # LRN helps in every seed
    runs = _runs({"baseline": {s: _history([0.6, base[s]], [0.7, 0.4]) for s in range(3)},
                  "no-lrn": {s: _history([0.6, base[s] + delta[s]], [0.7, 0.4])
                             for s in range(3)}})
    claim = _claim("lrn")
    row = report.measure_row(claim, claim.measures[0], runs)
    s = statistics.summarize([100 * d for d in delta])
    assert row.claim == "`lrn`" and row.paper == "+1.4 points" and row.n == 3
    assert row.effect == f"{s.mean:+.2f} points ± {s.std:.2f}"
    assert row.interval == f"[{s.low:+.2f} points, {s.high:+.2f} points]"
    assert row.verdict == statistics.REPRODUCED


def test_the_opposite_effect_is_not_reproduced_and_noise_is_inconclusive():
    claim = _claim("depth")
    worse = _runs({"baseline": {s: _history([0.40 + 0.01 * s], [0.3]) for s in range(3)},
                   "no-conv4": {s: _history([0.35 + 0.01 * s], [0.3]) for s in range(3)}})
    assert report.measure_row(claim, claim.measures[0], worse).verdict == \
        statistics.NOT_REPRODUCED
    noisy = _runs({"baseline": {0: _history([0.40], [0.3]), 1: _history([0.40], [0.3])},
                   "no-conv4": {0: _history([0.45], [0.3]), 1: _history([0.38], [0.3])}})
    assert report.measure_row(claim, claim.measures[0], noisy).verdict == \
        statistics.INCONCLUSIVE


def test_one_seed_is_inconclusive():
    claim = _claim("overlapping-pooling")
    runs = _runs({"baseline": {0: _history([0.40], [0.3])},
                  "pool-2x2": {0: _history([0.50], [0.3])}})
    row = report.measure_row(claim, claim.measures[0], runs)
    assert row.effect == "+10.00 points (one seed)" and row.interval == "-"
    assert row.verdict == statistics.INCONCLUSIVE


def test_steps_to_25_and_the_ratio():
    reached = _history([0.5] * 4, [0.6, 0.3, 0.25, 0.1], steps_per_epoch=7)
    assert measures.steps_to_25(_result("r", 0, reached)) == measures.Value(21.0)
    never = _history([0.5] * 4, [0.6, 0.5, 0.4, 0.3], steps_per_epoch=7)
    assert measures.steps_to_25(_result("t", 0, never)) == measures.Value(28.0, censored=True)
    claim = _claim("relu-vs-tanh")
    measure = claim.measures[0]
    # tanh reaches 25% at epochs 6, 7, 8; ReLU at epoch 1 every seed: ratios 6, 7, 8.
    runs = _runs({
        "convnet4-relu": {s: _history([0.5] * 8, [0.2] * 8) for s in range(3)},
        "convnet4-tanh": {s: _history([0.5] * 8, [0.5] * (5 + s) + [0.2] * (3 - s))
                          for s in range(3)}})
    row = report.measure_row(claim, measure, runs)
    assert row.effect == "7.00x ± 1.00"
    half = 4.3027 / math.sqrt(3)
    assert row.interval == f"[{7 - half:.2f}x, {7 + half:.2f}x]"
    assert row.verdict == statistics.REPRODUCED


def test_a_run_over_budget_is_a_lower_bound_never_a_number():
    claim = _claim("relu-vs-tanh")
    measure = claim.measures[0]
    relu = {s: _history([0.5] * 4, [0.5, 0.2, 0.2, 0.2]) for s in range(2)}
    tanh_never = {s: _history([0.5] * 4, [0.6] * 4) for s in range(2)}
    row = report.measure_row(claim, measure, _runs({"convnet4-relu": relu,
                                                    "convnet4-tanh": tanh_never}))
    assert row.effect.startswith("> 2.00x")  # 40 budget steps / 20
    # ReLU never reaching 25% leaves the ratio unknown.
    row = report.measure_row(claim, measure, _runs({"convnet4-relu": tanh_never,
                                                    "convnet4-tanh": relu}))
    assert row.effect.startswith("not measurable") and row.verdict == statistics.INCONCLUSIVE


def test_gap_and_epochs_to_converge():
    h = _history([0.6, 0.45, 0.41, 0.40], [0.7, 0.4, 0.3, 0.2])
    assert measures.gap(_result("a", 0, h)).value == pytest.approx(20.0)
    assert measures.epochs_to_converge(_result("a", 0, h)).value == 3.0  # within 1 point


def test_report_cites_its_plots(tmp_path):
    selected = claims.select(["dropout"])
    runs = _runs({"baseline": {s: _history([0.6, 0.5], [0.7, 0.55]) for s in range(2)},
                  "no-dropout": {s: _history([0.6, 0.52], [0.5, 0.3]) for s in range(2)}})
    text = report.write_report(tmp_path, selected, runs, header="made up").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `dropout`")]
    assert len(rows) == 2  # the gap and the epochs to converge
    assert "made up" in text and "**Verdict rule.**" in text
    assert "![Dropout prevents overfitting](dropout.png)" in text
    assert (tmp_path / "dropout.png").read_bytes()[:4] == b"\x89PNG"


def test_a_finding_says_whether_the_departure_helps():
    """sgd-init is not a claim of the paper: the same verdict rule, in its own words."""
    claim = _claim("sgd-init")
    assert {m.arm for m in claim.measures} == {"paper-weights", "paper-biases", "raw-input",
                                               "paper-init"}
    assert all(m.finding and m.reference == claims.BASELINE for m in claim.measures)
    chance = _runs({"baseline": {s: _history([0.30 + 0.01 * s], [0.3]) for s in range(3)},
                    "paper-init": {s: _history([0.90], [0.9]) for s in range(3)}})
    measure = next(m for m in claim.measures if m.arm == "paper-init")
    row = report.measure_row(claim, measure, chance)
    assert row.verdict == "the departure helps"
    assert row.effect.startswith("+59.00 points")
    better = _runs({"baseline": {s: _history([0.50 + 0.01 * s], [0.3]) for s in range(3)},
                    "paper-init": {s: _history([0.40 + 0.01 * s], [0.3]) for s in range(3)}})
    assert report.measure_row(claim, measure, better).verdict == "the departure hurts"
