"""Mean, standard deviation and 95% t-interval of per-seed effects, and the verdict rule.

Seeds are the replicates: each seed's effect compares two runs that share that seed. The
interval is ``mean +- t(0.975, n - 1) * std / sqrt(n)`` with the sample standard deviation;
it needs two seeds or more. scipy is not a dependency and torch's StudentT has no icdf, so the
quantiles come from the table below (those of any statistics table, to 4 decimals).

Verdict: "reproduced" when the interval excludes the null value (0 for a difference, 1 for a
ratio) on the paper's side, "not reproduced" when it excludes it on the other side,
"inconclusive at this scale" otherwise (also with one seed, where there is no interval).
"""

import math
from dataclasses import dataclass

# t(0.975, df) for df = 1..30; beyond 30, the normal quantile is within 2% of it.
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.9600

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive at this scale"


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return T975[df - 1] if df <= len(T975) else Z975


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # None with one value
    low: float | None  # the 95% interval, None with one value
    high: float | None


def summarize(values) -> Summary:
    """Mean, sample std and 95% t-interval of ``values`` (the per-seed effects)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values: need at least one")
    n, mean = len(values), math.fsum(values) / len(values)
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def verdict(summary: Summary, null: float = 0.0) -> str:
    """The verdict for an effect oriented so that the paper's claim is ``effect > null``."""
    if summary.low is None:
        return INCONCLUSIVE
    if summary.low > null:
        return REPRODUCED
    if summary.high < null:
        return NOT_REPRODUCED
    return INCONCLUSIVE
