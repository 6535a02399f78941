"""fastalex.training.study.statistics: the t quantiles, the interval against known values, the
verdict rule; and the claims' selection by name."""

import math

import pytest
import torch

from fastalex.training.study import claims, statistics
from fastalex.training.study.statistics import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Summary,
    summarize,
    t_quantile_975,
    verdict,
)


@pytest.mark.parametrize("df", list(range(1, 31)))
def test_t_table_is_the_975_quantile(df):
    # Integrate Student's t density (torch's log_prob) from 0 to the tabled quantile: 0.475.
    q = t_quantile_975(df)
    x = torch.linspace(0, q, 200_001, dtype=torch.float64)
    pdf = torch.distributions.StudentT(torch.tensor(float(df), dtype=torch.float64)).log_prob(
        x).exp()
    assert torch.trapezoid(pdf, x).item() == pytest.approx(0.475, abs=2e-5)


def test_t_quantile_beyond_the_table_and_bad_df():
    assert t_quantile_975(31) == statistics.Z975 and t_quantile_975(1000) == statistics.Z975
    with pytest.raises(ValueError, match="df"):
        t_quantile_975(0)


def test_interval_against_known_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.n == 5 and s.mean == pytest.approx(3.0)
    assert s.std == pytest.approx(math.sqrt(2.5))
    half = 2.7764 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) std / sqrt(n)
    assert (s.low, s.high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    # Two values: t(0.975, 1) = 12.7062 and std = |a - b| / sqrt(2).
    s = summarize([0.5, 1.7])
    assert s.std == pytest.approx(1.2 / math.sqrt(2))
    assert s.high - s.mean == pytest.approx(12.7062 * 1.2 / math.sqrt(2) / math.sqrt(2))


def test_random_values_match_torch():
    gen = torch.Generator().manual_seed(3)
    values = (torch.randn(7, generator=gen, dtype=torch.float64) * 2 + 1).tolist()
    s = summarize(values)
    t = torch.tensor(values, dtype=torch.float64)
    assert s.mean == pytest.approx(t.mean().item())
    assert s.std == pytest.approx(t.std(unbiased=True).item())
    assert s.high - s.low == pytest.approx(2 * 2.4469 * t.std().item() / math.sqrt(7))


def test_one_value_has_no_interval():
    s = summarize([0.7])
    assert (s.n, s.mean, s.std, s.low, s.high) == (1, 0.7, None, None, None)
    assert verdict(s) == INCONCLUSIVE
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize("low,high,null,expected", [
    (0.1, 2.0, 0.0, REPRODUCED),  # the interval excludes 0 on the paper's side
    (-2.0, -0.1, 0.0, NOT_REPRODUCED),  # ... on the other side
    (-0.5, 1.5, 0.0, INCONCLUSIVE),  # it contains 0
    (0.0, 1.0, 0.0, INCONCLUSIVE),  # touching is not excluding
    (1.2, 6.0, 1.0, REPRODUCED),  # a ratio: the null value is 1
    (0.6, 0.9, 1.0, NOT_REPRODUCED),
    (0.8, 1.3, 1.0, INCONCLUSIVE),
])
def test_verdict_rule(low, high, null, expected):
    assert verdict(Summary(3, (low + high) / 2, 1.0, low, high), null) == expected


def test_claims_by_name():
    assert [c.name for c in claims.select([])] == list(claims.NAMES)
    assert [c.name for c in claims.select(["lrn", " depth"])] == ["lrn", "depth"]
    with pytest.raises(ValueError, match=r"unknown claim 'lnr' \(valid: relu-vs-tanh, "):
        claims.select(["lrn", "lnr"])
    # The AlexNet claims share one baseline arm.
    arms = claims.arms_of(claims.select(["lrn", "depth", "ten-crop"]))
    assert [a.name for a in arms] == ["baseline", "no-lrn", "no-conv4"]
