"""95 % confidence intervals for the studies: Wilson intervals for one cell's rates, Student t over seeds,
and paired differences against a baseline with the same seeds; the exact tests (McNemar, sign) and the power of the
paired t-test (power, units needed, detectable effect) behind :mod:`layerprobe.analyse.paired`'s claims."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate ``k/n`` (scipy's ``binomtest(k, n).proportion_ci(method="wilson")``).
    Stays inside [0, 1], also at k=0 or k=n."""
    from scipy import stats

    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"wilson needs integer counts k (successes) and n (trials), got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson needs n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    if not 0 < level < 1:
        raise ValueError(f"wilson needs 0 < level < 1 (0.95 for 95 %), got level={level}")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def t_mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (one value per seed): mean +- t(n-1) * sd / sqrt(n), from
    scipy's ``ttest_1samp(values, 0).confidence_interval()``.

    With a handful of seeds a percentile bootstrap cannot be wider than the values themselves and so
    under-covers; the t interval accounts for the few values. One value has no interval: (nan, nan).
    NaNs are an error, not dropped.
    """
    from scipy import stats

    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"t_mean_ci needs a non-empty list of numbers, got {list(values)!r}")
    if np.isnan(x).any():
        raise ValueError(f"t_mean_ci got NaN in {x.tolist()}; drop the cells without this metric first")
    if not 0 < level < 1:
        raise ValueError(f"t_mean_ci needs 0 < level < 1, got level={level}")
    if x.size == 1:
        return math.nan, math.nan
    if x.std() == 0:  # no spread: scipy's interval is the point itself, with a precision warning
        return float(x.mean()), float(x.mean())
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence_level=level)
    return float(ci.low), float(ci.high)


def paired_t(diffs: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Mean of paired differences (treatment - baseline, one per seed) with its t interval and the two-sided
    p-value of a paired t-test (``ttest_1samp`` on the differences = ``ttest_rel``; nan for fewer than 2 pairs or no
    spread)."""
    from scipy import stats

    x = np.asarray(list(diffs), dtype=float)
    lo, hi = t_mean_ci(x, level)
    p = float(stats.ttest_1samp(x, 0.0).pvalue) if x.size > 1 and x.std() > 0 else math.nan
    return {"n_pairs": int(x.size), "mean_diff": float(x.mean()), "lo": lo, "hi": hi, "p": p}


def mcnemar_p(xa: np.ndarray, xb: np.ndarray) -> tuple[float, int, int]:
    """Exact two-sided McNemar test on 0/1 pairs: (p, #a right & b wrong, #a wrong & b right)."""
    from scipy import stats

    a_only = int(((xa == 1) & (xb == 0)).sum())
    b_only = int(((xa == 0) & (xb == 1)).sum())
    if a_only + b_only == 0:
        return 1.0, 0, 0
    return float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue), a_only, b_only


def sign_p(d: np.ndarray, alternative: str = "two-sided") -> float:
    """Exact sign test of the differences against 0 (zeros dropped)."""
    from scipy import stats

    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    if pos + neg == 0:
        return 1.0
    return float(stats.binomtest(pos, pos + neg, 0.5, alternative=alternative).pvalue)


def t_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample (paired) t-test with ``n`` units at standardised ``effect``: statsmodels'
    ``TTestPower().power``, and where that is NaN (scipy's noncentral t fails for large effects, few units and the
    small alphas of Holm's levels in a large family) the same P(|T| > t_crit) integrated over the chi-square of the
    variance estimate."""
    import warnings

    from scipy import integrate, stats
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(TTestPower().power(effect_size=effect, nobs=n, alpha=alpha))
    if math.isfinite(value):
        return value
    df, nc = n - 1, effect * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)

    def reject(v):
        scale = crit * math.sqrt(v / df)
        return (stats.norm.sf(scale - nc) + stats.norm.cdf(-scale - nc)) * stats.chi2.pdf(v, df)

    return float(min(1.0, integrate.quad(reject, 0, math.inf, limit=200)[0]))


def units_needed(effect: float, alpha: float = 0.05, power: float = 0.8, cap: int = 100_000) -> float:
    """The fewest units (at least 2) with which the two-sided paired t-test reaches ``power`` at standardised
    ``effect`` (mean / sd of the per-unit differences); inf beyond ``cap`` or for no effect."""
    from scipy import stats

    if not effect > 0:
        return math.inf
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    n = max(2, math.ceil((z / effect) ** 2))  # the normal approximation; the t test needs a few more
    while n <= cap and t_power(effect, n, alpha) < power:
        n += 1
    return float(n) if n <= cap else math.inf


@functools.cache  # a root of ~20 power evaluations that depends on the design alone: a family asks it per claim
def detectable(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The standardised effect the two-sided paired t-test with ``n`` units detects with ``power``."""
    from scipy.optimize import brentq

    return float(brentq(lambda e: t_power(e, n, alpha) - power, 1e-6, 1e4, xtol=1e-10))
