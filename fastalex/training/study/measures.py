"""The metrics a claim compares, read from one finished run (its ``result.json``).

Every metric returns a :class:`Value`: a number, or, for a threshold the run never reached
within its budget, the budget itself marked ``censored`` (the true value is larger), never an
invented number. Errors are in percentage points.
"""

from dataclasses import dataclass

from fastalex.training.study.claims import TRAIN_ERROR_THRESHOLD

# "Converged": the first epoch whose validation top-1 error is within this many points of the
# run's best.
CONVERGED_WITHIN = 1.0


@dataclass(frozen=True)
class Value:
    value: float
    censored: bool = False  # a threshold not reached: the true value exceeds ``value``


def val_top1(result: dict) -> Value:
    """The last epoch's validation top-1 error (not the best epoch's: no selection on val)."""
    return Value(100 * result["history"][-1]["val_top1_error"])


def train_top1(result: dict) -> Value:
    """The last epoch's training top-1 error (as the epoch measured it, while it trained)."""
    return Value(100 * result["history"][-1]["train_top1_error"])


def gap(result: dict) -> Value:
    """Validation minus training top-1 error at the last epoch (the training error as the
    epoch measured it, with dropout and augmentation on)."""
    last = result["history"][-1]
    return Value(100 * (last["val_top1_error"] - last["train_top1_error"]))


def steps_to_25(result: dict) -> Value:
    """Optimizer steps until an epoch's training error was at most 25%: the step count at the
    end of the first such epoch; the run's whole budget, censored, if none was."""
    for row in result["history"]:
        if row["train_top1_error"] <= TRAIN_ERROR_THRESHOLD:
            return Value(float(row["step"]))
    return Value(float(result["history"][-1]["step"]), censored=True)


def epochs_to_converge(result: dict) -> Value:
    """The first epoch whose validation top-1 error is within :data:`CONVERGED_WITHIN`
    points of the run's best."""
    errors = [100 * row["val_top1_error"] for row in result["history"]]
    best = min(errors)
    return Value(float(next(i + 1 for i, e in enumerate(errors) if e <= best + CONVERGED_WITHIN)))


def ten_crop_gain(result: dict) -> Value:
    """Centre-crop minus 10-crop validation top-1 error of the run's final checkpoint."""
    scores = result["ten_crop"]
    return Value(100 * (scores["center"]["top1_error"] - scores["ten_crop"]["top1_error"]))


METRICS = {f.__name__: f for f in (val_top1, train_top1, gap, steps_to_25, epochs_to_converge,
                                   ten_crop_gain)}


def selection_key(metric: str, result: dict) -> tuple:
    """Lower is better: a run that reached the threshold beats one that did not; ties of
    censored runs go to the lower final training error."""
    v = METRICS[metric](result)
    return (v.censored, v.value, result["history"][-1]["train_top1_error"])


def effect(measure, runs: dict, seed: int) -> Value | None:
    """``measure``'s effect at ``seed`` from ``runs`` (:meth:`Study.run`'s result). A ratio
    whose numerator was censored is a lower bound (censored); one whose denominator was
    censored is unknown: None."""
    metric = METRICS[measure.metric]
    a = metric(runs[measure.arm]["results"][seed])
    if measure.kind == "value":
        return a
    b = metric(runs[measure.reference]["results"][seed])
    if measure.kind == "difference":
        return Value(a.value - b.value, a.censored or b.censored)
    if b.censored:
        return None
    return Value(a.value / b.value, a.censored)
