"""95 % confidence intervals for the studies: Wilson intervals for one cell's rates, Student t over seeds,
and paired differences against a baseline with the same seeds."""

from __future__ import annotations

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
