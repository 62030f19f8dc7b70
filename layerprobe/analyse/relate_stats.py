"""The statistics of :mod:`layerprobe.analyse.relate`: Spearman's rho and the partial rho, permutation p-values within
or between CPT groups (exact or random orderings), the effective n under clustering and Benjamini-Hochberg q-values."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats

from layerprobe.analyse.relate_config import _CELL, CONTROL, EXACT_MAX_RUNS, REFINE, TABLE_COLUMNS, RelateConfig
from layerprobe.analyse.relate_features import strata


def _ranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, axis=-1)


def _centered_unit(r: np.ndarray) -> np.ndarray:
    c = r - r.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(c, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 1e-12 * np.sqrt(c.shape[-1]), c / norm, np.nan)


def _residual_unit(r: np.ndarray, rz: np.ndarray) -> np.ndarray:
    """Rows of ``r`` minus their least-squares fit on [1, rz], scaled to unit norm (NaN where nothing is left)."""
    c = r - r.mean(axis=-1, keepdims=True)
    zc = rz - rz.mean()
    zz = float(zc @ zc)
    if zz > 0:
        c = c - np.multiply.outer(c @ zc / zz, zc)
    return _centered_unit(c)


def _two_sided(le: np.ndarray, ge: np.ndarray, total: int, exact: bool) -> np.ndarray:
    if exact:
        return np.minimum(1.0, 2 * np.minimum(le, ge) / total)
    return np.minimum(1.0, 2 * (np.minimum(le, ge) + 1) / (total + 1))


def _tail_counts(
    xu: np.ndarray, yu: np.ndarray, obs: np.ndarray, perms: np.ndarray | Iterable[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """How many orderings (rows of ``perms``, an array or blocks of them) give ``xu @ yu[perm]`` <= and >= ``obs``,
    per row of ``xu``; in chunks, so the null never exceeds a few million numbers."""
    le, ge = np.zeros(len(xu)), np.zeros(len(xu))
    tol = 1e-12 * np.maximum(1.0, np.abs(obs))[:, None]
    chunk = max(1, 4_000_000 // max(len(xu), 1))
    for block in [perms] if isinstance(perms, np.ndarray) else perms:
        for start in range(0, len(block), chunk):
            null = xu @ yu[block[start : start + chunk]].T
            le += (null <= obs[:, None] + tol).sum(axis=1)
            ge += (null >= obs[:, None] - tol).sum(axis=1)
    return le, ge


def permutation_p(
    xu: np.ndarray, yu: np.ndarray, obs: np.ndarray, codes: np.ndarray, config: RelateConfig, refine_to: int = 0
) -> tuple[np.ndarray, bool]:
    """(two-sided p of ``obs = xu @ yu`` per row, exact?) with ``yu`` reordered only within the groups ``codes``
    (one group: every ordering). All orderings when there are at most ``config.permutations``; else that many
    random ones (seed ``config.seed``), and rows whose p is then below ``config.alpha`` get ``refine_to`` in all
    (the extra ones from seed + 1), so that a p small enough to pass Benjamini-Hochberg over many tests can be
    reached (each row's p stays valid: a row is refined or not by its first p alone)."""
    if within_orderings(codes) <= config.permutations:
        perms = _orderings(len(codes)) if np.all(codes == codes[0]) else exact_orderings(codes)
        le, ge = _tail_counts(xu, yu, obs, perms)
        p = _two_sided(le, ge, len(perms), exact=True)
        exact = True
    else:
        le, ge = _tail_counts(xu, yu, obs, _random_blocks(codes, config.permutations, config.seed))
        p = _two_sided(le, ge, config.permutations, exact=False)
        rows = np.flatnonzero(p < config.alpha) if refine_to > config.permutations else np.array([], dtype=int)
        if rows.size:
            extra = _random_blocks(codes, refine_to - config.permutations, config.seed + 1)
            le2, ge2 = _tail_counts(xu[rows], yu, obs[rows], extra)
            p[rows] = _two_sided(le[rows] + le2, ge[rows] + ge2, refine_to, exact=False)
        exact = False
    p[~np.isfinite(obs)] = np.nan
    return p, exact


def exact_spearman_p(rho: np.ndarray, x_ranks: np.ndarray, y_ranks: np.ndarray) -> np.ndarray:
    """Two-sided exact permutation p-values of Spearman's rho for rows of ``x_ranks`` against one ``y_ranks``.

    Enumerates all n! orderings of ``y_ranks``; p = min(1, 2 * min(P(rho* <= rho), P(rho* >= rho))), the
    definition of ``scipy.stats.permutation_test`` (which this equals for ``permutation_type="pairings"``).
    The null distribution of a row depends only on its multiset of ranks (reordering x is one more permutation),
    so it is computed once per distinct tie pattern: once in all for features without ties.
    """
    n = y_ranks.shape[-1]
    out = np.full(len(x_ranks), np.nan)
    if n < 2 or not len(x_ranks):
        return out
    perms = _centered_unit(y_ranks[_orderings(n)])
    patterns, which = np.unique(np.sort(x_ranks, axis=1), axis=0, return_inverse=True)
    which = which.ravel()
    for k, sorted_ranks in enumerate(patterns):
        null = np.sort(perms @ _centered_unit(sorted_ranks))  # all n! correlations under the null
        rows = np.flatnonzero(which == k)
        obs = rho[rows]
        tol = 1e-12 * np.maximum(1.0, np.abs(obs))
        less = np.searchsorted(null, obs + tol, side="right")
        greater = len(null) - np.searchsorted(null, obs - tol, side="left")
        out[rows] = _two_sided(less, greater, len(null), exact=True)
    out[~np.isfinite(rho)] = np.nan
    return out


@lru_cache(maxsize=4)
def _orderings(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8 if n < 128 else np.int64)


def within_orderings(codes: np.ndarray) -> int:
    """How many orderings of n values keep each within its group: prod_g n_g!."""
    return math.prod(math.factorial(int(c)) for c in np.bincount(codes))


def exact_orderings(codes: np.ndarray) -> np.ndarray:
    """Every ordering (rows of indices) that moves each position only to a position of its own group."""
    members = [np.flatnonzero(codes == g) for g in np.unique(codes)]
    rows = []
    for orders in itertools.product(*(itertools.permutations(m) for m in members)):
        perm = np.arange(len(codes))
        for m, o in zip(members, orders):
            perm[m] = o
        rows.append(perm)
    return np.array(rows)


def random_orderings(codes: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` random orderings (rows of indices) from ``seed`` that move each position only to a position of its
    own group (``codes`` 0..G-1; all zero: plain permutations)."""
    return np.concatenate(list(_random_blocks(codes, count, seed)))


def _random_blocks(codes: np.ndarray, count: int, seed: int, block: int = 8192) -> Iterator[np.ndarray]:
    """:func:`random_orderings` in blocks of ``block`` rows (the same orderings, a little memory at a time)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")  # positions sorted by group
    for start in range(0, count, block):
        keys = codes[None, :] + rng.random((min(block, count - start), len(codes)))  # by group, at random within
        perms = np.empty(keys.shape, dtype=np.int32)
        perms[:, order] = np.argsort(keys, axis=1)
        yield perms


def _means(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Mean of each row's values per group (columns = groups 0..G-1)."""
    member = np.zeros((codes.max() + 1, len(codes)))
    member[codes, np.arange(len(codes))] = 1.0
    return values @ member.T / member.sum(axis=1)


def _icc(r: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """One-way ANOVA intraclass correlation of each row within groups, clipped to [0, 1]."""
    n, sizes = r.shape[-1], np.bincount(codes)
    g = len(sizes)
    means = _means(r, codes)
    ssb = ((means - r.mean(axis=-1, keepdims=True)) ** 2 * sizes).sum(axis=-1)
    ssw = ((r - means[:, codes]) ** 2).sum(axis=-1)
    msb, msw = ssb / (g - 1), ssw / (n - g)
    m0 = (n - (sizes**2).sum() / n) / (g - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        icc = (msb - msw) / (msb + (m0 - 1) * msw)
    return np.clip(np.nan_to_num(icc, nan=0.0), 0.0, 1.0)


def effective_n(rx: np.ndarray, ry: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """n / (1 + (m0 - 1) icc_x icc_y) per row of ``rx`` (see the module docstring)."""
    n, sizes = len(ry), np.bincount(codes)
    g = len(sizes)
    if g in (1, n):
        return np.full(len(rx), float(n))
    m0 = (n - (sizes**2).sum() / n) / (g - 1)
    return n / (1 + (m0 - 1) * _icc(rx, codes) * _icc(ry[None, :], codes))


def _varies_within(x: np.ndarray, y: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per row of ``x``: whether some group has both x and y varying (else within-group orderings tell nothing)."""
    out = np.zeros(len(x), dtype=bool)
    for g in np.unique(codes):
        m = codes == g
        if m.sum() > 1 and np.ptp(y[m]) > 0:
            out |= np.ptp(x[:, m], axis=1) > 0
    return out


def _scheme(x: np.ndarray, y: np.ndarray, codes: np.ndarray, config: RelateConfig) -> np.ndarray:
    """Per row: True to permute within CPT groups, False to permute whole groups (their means)."""
    if within_orderings(codes) < config.min_within:
        return np.zeros(len(x), dtype=bool)
    return _varies_within(x, y, codes)


def _within_unit(u: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Rows of ``u`` minus their mean in each group, scaled to unit norm (NaN where nothing varies within groups)."""
    return _centered_unit(u - _means(u, codes)[:, codes])


def _group_test(
    x: np.ndarray, y: np.ndarray, codes: np.ndarray, z: np.ndarray | None, config: RelateConfig, refine_to: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """(statistic, p, method) of rho (z None) or of the partial rho given z over the group means, permuting the
    groups' outcomes."""
    xg, yg = _means(x, codes), _means(y[None, :], codes)[0]
    g = len(yg)
    rx, ry = _ranks(xg), _ranks(yg)
    if z is None:
        xu, yu = _centered_unit(rx), _centered_unit(ry)
    else:
        rz = _ranks(_means(z[None, :], codes)[0])
        xu, yu = _residual_unit(rx, rz), _residual_unit(ry[None, :], rz)[0]
    obs = np.clip(xu @ yu, -1.0, 1.0) if np.isfinite(yu).all() else np.full(len(xu), np.nan)
    if z is None and g <= EXACT_MAX_RUNS:
        return obs, exact_spearman_p(obs, rx, ry), "exact"
    p, exact = permutation_p(xu, yu, obs, np.zeros(g, dtype=int), config, refine_to)
    return obs, p, "exact" if exact else "perm"


def _tests(
    x: np.ndarray, y: np.ndarray, codes: np.ndarray, z: np.ndarray, config: RelateConfig, refine_to: int = 0
) -> dict:
    """Every statistic of rows ``x`` (k x n, finite) against ``y`` (n,) for one set of runs (see the docstring)."""
    k, n = x.shape
    out = {
        "rho": np.full(k, np.nan),
        "rho_tested": np.full(k, np.nan),
        "p": np.full(k, np.nan),
        "partial_rho": np.full(k, np.nan),
        "partial_rho_tested": np.full(k, np.nan),
        "partial_p": np.full(k, np.nan),
        "n_eff": np.full(k, np.nan),
        "p_method": np.full(k, "none", dtype=object),
    }
    codes = np.unique(codes, return_inverse=True)[1].ravel()
    n_groups = int(codes.max()) + 1 if n else 0
    out["n_groups"] = np.full(k, n_groups)
    if n < 3:
        return out
    rx, ry = _ranks(x), _ranks(y)
    yu = _centered_unit(ry)
    if not np.isfinite(yu).all():  # a constant outcome: nothing can correlate with it
        return out
    out["rho"] = np.clip(_centered_unit(rx) @ yu, -1.0, 1.0)
    out["n_eff"] = effective_n(rx, ry, codes)
    within = _scheme(x, y, codes, config)
    level = "runs" if n_groups == n else "cpt-groups"
    if within.any():
        # permuting y within groups leaves the groups' means fixed, so rho moves only with the within-group
        # correlation: test (and report) that, the ranks centred in each CPT group
        xw, yw = _within_unit(rx[within], codes), _within_unit(ry[None, :], codes)[0]
        out["rho_tested"][within] = obs = np.clip(xw @ yw, -1.0, 1.0)
        out["p"][within], exact = permutation_p(xw, yw, obs, codes, config, refine_to)
        out["p_method"][within] = f"within-cpt {'exact' if exact else 'perm'}"
    if (~within).any() and n_groups >= 3:
        out["rho_tested"][~within], out["p"][~within], how = _group_test(x[~within], y, codes, None, config, refine_to)
        out["p_method"][~within] = f"{level} {how}"
    # partial rho given the total SFT drift, over the runs that have one
    has = np.isfinite(z)
    if has.sum() >= 4:
        xs, ys, zs, cs = x[:, has], y[has], z[has], np.unique(codes[has], return_inverse=True)[1].ravel()
        rz = _ranks(zs)
        ex, ey = _residual_unit(_ranks(xs), rz), _residual_unit(_ranks(ys)[None, :], rz)[0]
        if np.isfinite(ey).all():
            out["partial_rho"] = np.clip(ex @ ey, -1.0, 1.0)
            within = _scheme(xs, ys, cs, config)
            if within.any():
                exw, eyw = _within_unit(ex[within], cs), _within_unit(ey[None, :], cs)[0]
                out["partial_rho_tested"][within] = obs = np.clip(exw @ eyw, -1.0, 1.0)
                out["partial_p"][within] = permutation_p(exw, eyw, obs, cs, config, refine_to)[0]
            if (~within).any() and cs.max() + 1 >= 4:
                stat, p, _ = _group_test(xs[~within], ys, cs, zs, config, refine_to)
                out["partial_rho_tested"][~within], out["partial_p"][~within] = stat, p
    out["p_method"][~np.isfinite(out["p"])] = "none"
    return out


def spearman_rows(
    x: np.ndarray, y: np.ndarray, config: RelateConfig | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Spearman rho and two-sided permutation p of each row of ``x`` (k x n, finite) against ``y`` (n,),
    runs independent: (rho, p, "exact" or "perm")."""
    res = _tests(
        np.asarray(x, float), np.asarray(y, float), np.arange(len(y)), np.full(len(y), np.nan), config or RelateConfig()
    )
    methods = {m.split()[-1] for m in res["p_method"] if m != "none"}
    return res["rho"], res["p"], methods.pop() if len(methods) == 1 else "none"


def correlate(
    features: pd.DataFrame,
    outcomes: pd.DataFrame,
    design: pd.DataFrame | None = None,
    config: RelateConfig | None = None,
) -> pd.DataFrame:
    """The tidy table (:data:`TABLE_COLUMNS`): every feature cell against every outcome, per stratum.

    ``features``: long (run, feature, phase, layer, block, value[, frozen]); ``outcomes``: one row per run;
    ``design``: one row per run with study, method, cpt_group and total_drift (None: one study, one method,
    every run its own CPT, no control, so no partial rho)."""
    cfg = config or RelateConfig()
    if "frozen" not in features:
        features = features.assign(frozen=False)
    f = features.drop_duplicates([*_CELL, "run"]).set_index([*_CELL, "run"])
    wide = f["value"].unstack("run").astype(np.float64)
    frozen = f["frozen"].astype(bool).unstack("run", fill_value=False).reindex_like(wide)
    if design is None:
        design = pd.DataFrame(
            {"study": "", "method": "", "cpt_group": wide.columns, CONTROL: np.nan}, index=wide.columns
        )
    rows = []
    for stratum, members in strata(design.loc[[r for r in design.index if r in wide.columns]]):
        x_all = wide[members].to_numpy(dtype=np.float64, copy=True)
        fr = frozen[members].to_numpy(dtype=bool)
        x_all[fr] = np.nan
        codes = design.loc[members, "cpt_group"].to_numpy()
        z = design.loc[members, CONTROL].to_numpy(dtype=np.float64)
        tests = len(wide) * outcomes.shape[1]  # a p below alpha / tests must be reachable for BH to pass one
        refine_to = max(cfg.permutations, math.ceil(REFINE * tests / cfg.alpha))
        parts = []
        for outcome in outcomes.columns:
            y_all = outcomes[outcome].reindex(members).to_numpy(dtype=np.float64)
            part = _outcome_tests(wide.index, x_all, fr, y_all, codes, z, cfg, refine_to)
            part.insert(0, "stratum", stratum)
            part["outcome"] = outcome
            parts.append(part)
        if parts:
            t = pd.concat(parts, ignore_index=True)
            t["q"], t["partial_q"] = bh_qvalues(t["p"].to_numpy()), bh_qvalues(t["partial_p"].to_numpy())
            rows.append(t)
    if not rows:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    table = pd.concat(rows, ignore_index=True)
    return table[list(TABLE_COLUMNS)].astype(
        {"layer": "int64", "n_runs": "int64", "n_frozen": "int64", "n_groups": "int64"}
    )


def _outcome_tests(
    cells: pd.Index,
    x_all: np.ndarray,
    frozen: np.ndarray,
    y_all: np.ndarray,
    codes: np.ndarray,
    z: np.ndarray,
    cfg: RelateConfig,
    refine_to: int,
) -> pd.DataFrame:
    """Every feature cell (a row of ``x_all``, runs in columns; NaN where missing or frozen) against one outcome
    ``y_all``: the cells sharing a pattern of usable runs are tested together."""
    ok = np.isfinite(x_all) & np.isfinite(y_all)[None, :]
    patterns, which = np.unique(ok, axis=0, return_inverse=True)
    which = which.ravel()
    part = cells.to_frame(index=False)
    res = {
        c: np.full(len(cells), np.nan)
        for c in ("rho", "rho_tested", "p", "partial_rho", "partial_rho_tested", "partial_p", "n_eff", "n_groups")
    }
    res["p_method"] = np.full(len(cells), "none", dtype=object)
    for k, mask in enumerate(patterns):
        idx = np.flatnonzero(which == k)
        got = _tests(x_all[np.ix_(idx, mask)], y_all[mask], codes[mask], z[mask], cfg, refine_to)
        for c in res:
            res[c][idx] = got[c]
    for c, v in res.items():
        part[c] = v
    part["n_runs"] = ok.sum(axis=1)
    part["n_frozen"] = (frozen & np.isfinite(y_all)[None, :]).sum(axis=1)
    return part


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values over the finite p-values (NaN stays NaN)."""
    q = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def min_exact_p(n: int) -> float:
    """The smallest two-sided p an exact Spearman test can give with n runs (no ties): 2 / n!."""
    return min(1.0, 2.0 / math.factorial(n))
