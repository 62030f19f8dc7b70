"""Outcomes at matched drift: does it matter where SFT trains, or only how far it moves the weights?

The input is one row per run: its ``arm`` (what was trained, how), its ``unit`` (the runs that share a CPT, a world
and a training seed: the level a claim varies at), its whole-model ``drift`` (``layerprobe.weights.drift``) and outcome
columns. Arms are compared at one reference drift, in three ways that answer the same question:

- :func:`at_drift`: per unit and arm, the outcome at the reference drift read from the least-squares line of the
  outcome on log(drift) through that arm's runs in that unit (with two doses, the line through both), flagged
  ``extrapolated`` when the reference lies outside the runs' drifts;
- :func:`curve_at_drift`: the same read from within runs: each run's probe curve over its SFT steps interpolated in
  log(drift) where its drift crosses the reference, averaged over the unit's runs of the arm;
- :func:`mixed_fit`: ``outcome ~ C(arm) * log(drift / reference)`` with a random intercept per unit, and optionally
  per world and per seed, crossed (statsmodels' MixedLM), its Wald tests of the arm x drift interaction and of the
  arms at the reference drift.

:func:`contrasts` tests every pair of arms on the per-unit values with the unit as the unit
(:func:`layerprobe.analyse.paired.unit_test`: paired t, TOST against the outcome's margin, Holm over the family, the
three verdicts). The mixed model's tests are asymptotic (z) and lean on few units; the per-unit contrasts are the
verdicts::

    values = at_drift(runs, "d.cpt_text_loss", reference=0.006)
    contrasts(values, margin=0.05)
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd

from layerprobe.analyse.paired import holm, unit_test, verdicts

KEYS = ("unit", "arm")


def _check(runs: pd.DataFrame, outcome: str, x: str = "drift") -> None:
    missing = [c for c in (*KEYS, x, outcome) if c not in runs.columns]
    if missing:
        raise ValueError(f"expected columns {', '.join((*KEYS, x, outcome))}; missing {', '.join(missing)}")
    if (runs[x] <= 0).any():
        raise ValueError(f"{x} must be > 0 (a log scale), got {runs[x].min()}; drop runs that did not move")


def at_drift(runs: pd.DataFrame, outcome: str, reference: float) -> pd.DataFrame:
    """Per (unit, arm): ``value`` (the outcome at ``reference`` drift on the least-squares line in log drift),
    ``n_runs``, ``lo_drift``, ``hi_drift`` and ``extrapolated``. A unit whose arm has one run, or runs at one drift,
    has no line: its value is NaN."""
    _check(runs, outcome)
    rows = []
    for (unit, arm), g in runs.dropna(subset=[outcome]).groupby(list(KEYS), sort=True):
        x, y = np.log(g["drift"].to_numpy() / reference), g[outcome].to_numpy(dtype=float)
        value = math.nan
        if len(g) > 1 and np.ptp(x) > 0:
            _slope, intercept = np.polyfit(x, y, 1)
            value = float(intercept)  # x = 0 at the reference
        rows.append(
            {
                "unit": unit,
                "arm": arm,
                "value": value,
                "n_runs": len(g),
                "lo_drift": g["drift"].min(),
                "hi_drift": g["drift"].max(),
                "extrapolated": not (g["drift"].min() <= reference <= g["drift"].max()),
            }
        )
    return pd.DataFrame(rows)


def curve_at_drift(curves: pd.DataFrame, outcome: str, reference: float) -> pd.DataFrame:
    """Per (unit, arm): the mean over the unit's runs of the arm of each run's ``outcome`` where its drift first
    reaches ``reference``, linear in log(drift) between the two probe steps around it. ``curves``: one row per
    (``run``, ``step``) with ``unit``, ``arm``, ``drift``, the outcome. Runs that never reach the reference are left
    out (``n_runs`` counts the others; a unit and arm with none is not listed)."""
    _check(curves[curves["drift"] > 0], outcome)
    rows = []
    for (unit, arm, run), g in curves.dropna(subset=[outcome]).groupby(["unit", "arm", "run"], sort=True):
        g = g[g["drift"] > 0].sort_values("step")
        above = np.flatnonzero(g["drift"].to_numpy() >= reference)
        if not above.size:
            continue
        i = above[0]
        if i == 0:  # crossed before the first probe with drift: no bracket
            continue
        x0, x1 = np.log(g["drift"].iloc[[i - 1, i]].to_numpy())
        y0, y1 = g[outcome].iloc[[i - 1, i]].to_numpy(dtype=float)
        w = (math.log(reference) - x0) / (x1 - x0)
        rows.append({"unit": unit, "arm": arm, "run": run, "value": y0 + w * (y1 - y0)})
    per_run = pd.DataFrame(rows, columns=["unit", "arm", "run", "value"])
    return per_run.groupby(["unit", "arm"], as_index=False).agg(value=("value", "mean"), n_runs=("run", "size"))


def contrasts(
    values: pd.DataFrame,
    margin: float = math.nan,
    alpha: float = 0.05,
    power: float = 0.8,
    arms: list[str] | None = None,
) -> pd.DataFrame:
    """Every pair of arms (a - b) on the per-unit ``value`` of :func:`at_drift` / :func:`curve_at_drift`, over
    the units both have: :func:`~layerprobe.analyse.paired.unit_test` at ``alpha`` / the number of pairs (mde,
    units_needed), Holm over the pairs for p and the TOST p, and the verdict."""
    wide = values.pivot(index="unit", columns="arm", values="value")
    arms = arms or list(wide.columns)
    pairs = list(itertools.combinations(arms, 2))
    rows = []
    for a, b in pairs:
        d = (wide[a] - wide[b]).dropna()
        rows.append(
            {
                "a": a,
                "b": b,
                "mean_a": float(wide.loc[d.index, a].mean()),
                "mean_b": float(wide.loc[d.index, b].mean()),
                **unit_test(d.to_numpy(), margin, alpha / max(len(pairs), 1), power),
                "unit_diffs": " ".join(f"{v:+.3g}" for v in d),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"].to_numpy())
    out["p_tost_holm"] = holm(out["p_tost"].to_numpy())
    out["verdict"] = verdicts(out["p_holm"], out["p_tost_holm"], alpha)
    return out


def mixed_fit(
    runs: pd.DataFrame, outcome: str, reference: float, reference_arm: str, crossed: tuple[str, ...] = ()
) -> dict:
    """``outcome ~ C(arm) * x`` with ``x = log(drift / reference)`` and a random intercept per unit (MixedLM, REML).
    ``crossed`` (columns such as ``("world", "seed")``): a random intercept for each of them as well, crossed, beside
    the unit's (statsmodels' variance components over one group). Returns ``params`` (a frame: term, estimate, se,
    lo, hi, p), the two Wald tests: ``interaction`` (every arm's slope equal; chi2, df, p) and ``arms_at_reference``
    (every arm's level at the reference drift equal), and ``var``, each random intercept's variance by name."""
    import statsmodels.formula.api as smf

    _check(runs, outcome)
    missing = [c for c in crossed if c not in runs]
    if missing:
        raise ValueError(f"crossed names columns of the runs, got {missing} among {list(runs.columns)}")
    d = runs.dropna(subset=[outcome]).assign(x=lambda t: np.log(t["drift"] / reference), y=lambda t: t[outcome])
    arms = sorted(d["arm"].unique())
    if reference_arm not in arms:
        raise ValueError(f"reference arm {reference_arm!r} not among the arms {arms}")
    formula = f"y ~ C(arm, Treatment({reference_arm!r})) * x"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter at a boundary (a variance 0) is reported below
        if crossed:
            vc = {c: f"0 + C({c})" for c in (*crossed, "unit")}
            model = smf.mixedlm(formula, d, groups=np.zeros(len(d)), re_formula="0", vc_formula=vc)
        else:
            model = smf.mixedlm(formula, d, groups=d["unit"])
        res = model.fit(reml=True)
    var = dict(zip(model.exog_vc.names, map(float, res.vcomp))) if crossed else {"unit": float(res.cov_re.iloc[0, 0])}
    names = list(res.fe_params.index)
    ci = res.conf_int().loc[names]
    params = pd.DataFrame(
        {
            "term": names,
            "estimate": res.fe_params.to_numpy(),
            "se": res.bse_fe.to_numpy(),
            "lo": ci[0].to_numpy(),
            "hi": ci[1].to_numpy(),
            "p": res.pvalues[names].to_numpy(),
        }
    )

    inter = [n for n in names if ":x" in n]
    level = [n for n in names if n.startswith("C(arm") and ":x" not in n]
    return {
        "params": params,
        "interaction": _wald(res, inter),
        "arms_at_reference": _wald(res, level),
        "var": var,
        "resid_var": float(res.scale),
        "n_runs": len(d),
        "n_units": d["unit"].nunique(),
        "converged": bool(res.converged),
        "formula": formula,
    }


def _wald(res, terms: list[str]) -> dict:
    """The joint Wald test that the fitted ``terms`` are all 0."""
    if not terms:
        return {"chi2": math.nan, "df": 0, "p": math.nan}
    r = np.zeros((len(terms), len(res.params)))
    for i, t in enumerate(terms):
        r[i, list(res.params.index).index(t)] = 1.0
    w = res.wald_test(r, scalar=True)
    return {"chi2": float(w.statistic), "df": len(terms), "p": float(w.pvalue)}
