"""95 % confidence intervals for the studies: Wilson intervals for rates, percentile bootstrap over seeds.

Plain numpy; no torch, no scipy needed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a rate ``k/n`` (``z=1.96``: 95 %). Stays inside [0, 1], also at k=0 or k=n."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"wilson needs integer counts k (successes) and n (trials), got k={k!r}, n={n!r}")
    k, n = int(k), int(n)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson needs n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    if z <= 0:
        raise ValueError(f"wilson needs z > 0 (1.96 for 95 %), got z={z}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 10000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per seed), resampling with replacement.

    With one value the interval is that value (no spread to resample); NaNs are an error, not dropped.
    """
    x = np.asarray(list(values), dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_mean_ci needs a non-empty list of numbers, got {list(values)!r}")
    if np.isnan(x).any():
        raise ValueError(f"bootstrap_mean_ci got NaN in {x.tolist()}; drop the cells without this metric first")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap_mean_ci needs n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)
