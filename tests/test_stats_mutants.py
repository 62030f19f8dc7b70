"""layerprobe.core.stats against plain reference formulas, at the defaults and at the edges mutation testing found
unchecked: a spread of exactly 1, two pairs, as many discordant pairs each way, a level passed on, a missing value,
the default level, alpha and power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.power import TTestPower

from layerprobe.core import stats


def t_reference(x, level=0.95):
    """mean +- t((1+level)/2, n-1) * sd / sqrt(n) and the two-sided p of mean / (sd / sqrt(n)) on n-1 df."""
    x = np.asarray(x, dtype=float)
    n, m, sd = len(x), x.mean(), x.std(ddof=1)
    half = sps.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return m - half, m + half, 2 * sps.t.sf(abs(m / (sd / math.sqrt(n))), n - 1)


def test_wilson_defaults_to_95_percent_by_the_formula():
    k, n, z = 3, 10, sps.norm.ppf(0.975)
    centre = (k + z**2 / 2) / (n + z**2)
    half = z * math.sqrt(k * (n - k) / n + z**2 / 4) / (n + z**2)
    assert stats.wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_t_interval_of_a_spread_of_exactly_one():
    x = [0.0, 2.0]  # population sd 1: not "no spread"
    lo, hi, _ = t_reference(x)
    assert stats.t_mean_ci(x) == pytest.approx((lo, hi), rel=1e-12)
    assert hi - lo > 20  # t(0.975, 1 df) = 12.7: two seeds say little


def test_t_interval_refuses_a_level_of_zero_and_a_missing_value():
    with pytest.raises(ValueError, match="t_mean_ci needs 0 < level < 1, got level=0"):
        stats.t_mean_ci([1.0, 2.0, 4.0], level=0)
    with pytest.raises(ValueError, match="t_mean_ci got NaN"):
        stats.t_mean_ci([1.0, None, 2.0])


@pytest.mark.parametrize("diffs", [[0.3, 0.5], [0.3, 0.5, -0.1, 0.9]], ids=["two pairs", "four pairs"])
@pytest.mark.parametrize("level", [0.95, 0.8])
def test_paired_t_is_the_reference_at_the_level_asked(diffs, level):
    lo, hi, p = t_reference(diffs, level)
    got = stats.paired_t(diffs, level)
    assert got == pytest.approx({"n_pairs": len(diffs), "mean_diff": np.mean(diffs), "lo": lo, "hi": hi, "p": p})


def test_mcnemar_counts_as_many_discordant_pairs_each_way():
    xa = np.array([1, 1, 0, 0, 1, 1])
    xb = np.array([0, 0, 1, 1, 1, 0])
    p, a_only, b_only = stats.mcnemar_p(xa, xb)
    assert (a_only, b_only) == (3, 2) and p == pytest.approx(1.0)  # binomial: P(|X - 2.5| >= 0.5) = 1
    p, a_only, b_only = stats.mcnemar_p(np.array([1, 1, 0, 0]), np.array([0, 0, 1, 1]))
    assert (p, a_only, b_only) == (1.0, 2, 2)


def power_reference(effect, n, alpha=0.05):
    return TTestPower().power(effect_size=effect, nobs=n, alpha=alpha)


def test_units_needed_defaults_to_alpha_5_percent_and_power_80_percent():
    n = 2
    while power_reference(0.8, n) < 0.8:
        n += 1
    assert stats.units_needed(0.8) == n == 15


def test_detectable_defaults_to_alpha_5_percent_and_power_80_percent():
    reference = TTestPower().solve_power(nobs=10, alpha=0.05, power=0.8)
    assert stats.detectable(10) == pytest.approx(reference, rel=1e-6)
    assert power_reference(stats.detectable(10), 10) == pytest.approx(0.8, abs=1e-8)


def units_reference(effect, alpha=0.05, power=0.8):
    n = 2
    while power_reference(effect, n, alpha) < power:
        n += 1
    return n


@pytest.mark.parametrize("effect", [0.3, 0.55, 1.2, 2.0, 30.0])
def test_units_needed_is_the_first_n_reaching_the_power(effect):
    assert stats.units_needed(effect) == units_reference(effect)
    assert stats.units_needed(effect, alpha=0.01, power=0.9) == units_reference(effect, 0.01, 0.9)


def test_units_needed_up_to_the_cap_and_no_further():
    assert stats.units_needed(0.8, cap=15) == 15  # reached exactly at the cap
    assert stats.units_needed(0.8, cap=14) == math.inf


def test_t_power_defaults_to_alpha_5_percent():
    assert stats.t_power(0.5, 10) == pytest.approx(power_reference(0.5, 10), rel=1e-9)
