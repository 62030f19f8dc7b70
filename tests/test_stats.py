"""layerprobe.core.stats against plain reference computations: closed forms, exact binomial sums, the t-test by hand."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from layerprobe.core.stats import detectable, mcnemar_p, paired_t, sign_p, t_mean_ci, t_power, units_needed, wilson


def _wilson_closed_form(k, n, level=0.95):
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k, n, level", [(0, 1, 0.95), (1, 1, 0.95), (3, 10, 0.95), (8, 10, 0.99), (57, 57, 0.9)])
def test_wilson_is_the_closed_form(k, n, level):
    lo, hi = wilson(k, n, level)
    ref_lo, ref_hi = _wilson_closed_form(k, n, level)
    assert lo == pytest.approx(max(ref_lo, 0.0), abs=1e-12) and hi == pytest.approx(min(ref_hi, 1.0), abs=1e-12)


@pytest.mark.parametrize(
    "k, n, level", [(True, 3, 0.95), (1, True, 0.95), (1.5, 3, 0.95), (1, 0, 0.95), (4, 3, 0.95), (-1, 3, 0.95)]
)
def test_wilson_rejects_bad_counts(k, n, level):
    with pytest.raises(ValueError, match="wilson needs"):
        wilson(k, n, level)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5])
def test_wilson_rejects_bad_levels(level):
    with pytest.raises(ValueError, match="0 < level < 1"):
        wilson(3, 10, level)


def _t_interval(x, level=0.95):
    x = np.asarray(x, dtype=float)
    half = sps.t.ppf(1 - (1 - level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return x.mean() - half, x.mean() + half


@pytest.mark.parametrize("values, level", [([1.0, 2.0], 0.95), ([0.1, 0.4, 0.35, 0.2], 0.95), ([3, 5, 4, 9, 1], 0.8)])
def test_t_mean_ci_is_mean_plus_minus_t_times_the_standard_error(values, level):
    assert t_mean_ci(values, level) == pytest.approx(_t_interval(values, level), abs=1e-12)


def test_t_mean_ci_without_spread_or_with_one_value():
    assert t_mean_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    lo, hi = t_mean_ci([0.3])
    assert math.isnan(lo) and math.isnan(hi)


@pytest.mark.parametrize(
    "values, level, match",
    [
        ([], 0.95, "non-empty"),
        ([[1.0, 2.0]], 0.95, "non-empty"),
        ([1.0, math.nan], 0.95, "NaN"),
        ([1, 2], 1.0, "level"),
    ],
)
def test_t_mean_ci_rejects_bad_input(values, level, match):
    with pytest.raises(ValueError, match=match):
        t_mean_ci(values, level)


def test_paired_t_is_the_t_test_by_hand():
    d = np.array([0.12, -0.03, 0.08, 0.2, 0.05])
    out = paired_t(d)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert out["n_pairs"] == 5 and out["mean_diff"] == pytest.approx(d.mean(), abs=1e-15)
    assert out["p"] == pytest.approx(2 * sps.t.sf(abs(t), d.size - 1), rel=1e-10)
    assert (out["lo"], out["hi"]) == pytest.approx(_t_interval(d), abs=1e-12)
    assert math.isnan(paired_t([0.2, 0.2])["p"]) and math.isnan(paired_t([0.2])["p"])


def _binom_tail(k, n, upper):
    """P(X <= k) (upper=False) or P(X >= k) of X ~ Binomial(n, 1/2), by summing the terms."""
    ks = range(k, n + 1) if upper else range(k + 1)
    return sum(math.comb(n, i) for i in ks) / 2**n


@pytest.mark.parametrize("pos, neg, zeros", [(3, 0, 0), (5, 2, 1), (2, 6, 0), (4, 4, 3), (1, 0, 2), (9, 1, 0)])
def test_sign_p_is_the_exact_binomial(pos, neg, zeros):
    d = np.array([0.5] * pos + [-0.25] * neg + [0.0] * zeros)
    n = pos + neg
    two_sided = min(1.0, 2 * _binom_tail(min(pos, neg), n, upper=False))
    assert sign_p(d) == pytest.approx(two_sided, abs=1e-12)
    assert sign_p(d, "greater") == pytest.approx(_binom_tail(pos, n, upper=True), abs=1e-12)
    assert sign_p(d, "less") == pytest.approx(_binom_tail(pos, n, upper=False), abs=1e-12)


def test_sign_p_of_no_nonzero_difference_is_one():
    assert sign_p(np.zeros(4)) == 1.0 and sign_p(np.array([])) == 1.0


def test_mcnemar_p_counts_the_discordant_pairs():
    xa = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1])
    xb = np.array([0, 0, 0, 1, 1, 0, 0, 0, 1])
    p, a_only, b_only = mcnemar_p(xa, xb)
    assert (a_only, b_only) == (4, 1)
    assert p == pytest.approx(min(1.0, 2 * _binom_tail(1, 5, upper=False)), abs=1e-12)
    assert mcnemar_p(xa, xa) == (1.0, 0, 0)


def _power_by_integral(effect, n, alpha):
    df, crit = n - 1, sps.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n)

    def f(v):
        scale = crit * math.sqrt(v / df)
        return (sps.norm.sf(scale - nc) + sps.norm.cdf(-scale - nc)) * sps.chi2.pdf(v, df)

    return integrate.quad(f, 0, math.inf, limit=200)[0]


@pytest.mark.parametrize("effect, n, alpha", [(0.8, 6, 0.05), (1.5, 3, 0.01), (7.104, 4, 0.05 / 47)])
def test_t_power_is_the_rejection_probability(effect, n, alpha):
    assert t_power(effect, n, alpha) == pytest.approx(_power_by_integral(effect, n, alpha), abs=1e-6)


def test_units_needed_is_the_first_n_with_the_power():
    for effect, alpha, power in [(0.9, 0.05, 0.8), (1.6, 0.01, 0.9), (0.5, 0.05, 0.8)]:
        n = int(units_needed(effect, alpha, power))
        assert _power_by_integral(effect, n, alpha) >= power - 1e-9
        assert n == 2 or _power_by_integral(effect, n - 1, alpha) < power
    assert units_needed(0.0) == math.inf and units_needed(-1.0) == math.inf
    assert units_needed(0.01, cap=50) == math.inf  # needs ~78,000 units


def test_detectable_is_the_effect_with_the_asked_power():
    for n, alpha, power in [(3, 0.05, 0.8), (8, 0.01, 0.9), (20, 0.05, 0.5)]:
        effect = detectable(n, alpha, power)
        assert _power_by_integral(effect, n, alpha) == pytest.approx(power, abs=1e-6)
