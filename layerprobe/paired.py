"""Paired comparisons of two arms on the same probes and seeds, for a study's family of claims.

An *arm* is a set of run folders, one per training seed, evaluated at one phase (``cpt`` or ``sft``). Two arms
are compared item by item: the same probe (or held-out instruction) under the same seed, read from each run's
``eval/<phase>-answers.jsonl``. For a metric with one value per item (:data:`ITEM_METRICS`):

- ``diff``: the mean over seeds and items of (arm a - arm b), e.g. a difference in QA accuracy;
- ``lo``/``hi``: a 95 % paired bootstrap interval that resamples seeds and then items (the same resampled items
  in both arms, so the pairing is kept);
- ``p``: exact McNemar (``scipy.stats.binomtest`` on the discordant (seed, item) pairs) for 0/1 metrics, the
  Wilcoxon signed-rank test on the items' seed-averaged differences for continuous ones;
- ``seed_diffs``: each seed's own difference, so a reader sees whether the seeds agree.

:func:`holm` adjusts the p-values of a family of claims (Holm 1979, "A simple sequentially rejective multiple test
procedure", Scand. J. Statist. 6:65-70).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from layerprobe import rundir

# metric -> (the answers' kind, the per-item field, 0/1 or continuous)
ITEM_METRICS = {
    "cloze_acc": ("cloze", "correct", True),
    "qa_acc": ("qa", "correct", True),
    "gozaru_rate": ("instruction", "correct", True),
    "gozaru_first": ("instruction", "first", True),
    "eos_rate": ("instruction", "eos", True),
    "style_logodds": ("instruction", "style_logodds", False),
}


@dataclass(frozen=True)
class Arm:
    """Run folders by training seed, read at one evaluation phase."""

    runs: dict  # seed -> run folder
    phase: str = "sft"


def item_values(run_dir: str | os.PathLike, phase: str, metric: str) -> pd.Series:
    """One run's per-item values of ``metric`` at ``phase``, indexed by the item's prompt."""
    if metric not in ITEM_METRICS:
        raise ValueError(f"metric must be one of {', '.join(ITEM_METRICS)}, got {metric!r}")
    kind, field, _ = ITEM_METRICS[metric]
    path = rundir.answers_path(run_dir, phase)
    if not path.is_file():
        raise FileNotFoundError(f"no per-item answers at {path}; evaluate the run first (layerprobe eval --out RUN)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    values = {r["prompt"]: float(r[field]) for r in rows if r.get("kind") == kind and r.get(field) is not None}
    return pd.Series(values, name=metric, dtype=float)


def paired_items(a: Arm, b: Arm, metric: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Arrays (seeds x items) of both arms on the seeds both have and the items every run has."""
    seeds = sorted(set(a.runs) & set(b.runs))
    if not seeds:
        raise ValueError(f"the arms share no seed: {sorted(a.runs)} vs {sorted(b.runs)}")
    va = [item_values(a.runs[s], a.phase, metric) for s in seeds]
    vb = [item_values(b.runs[s], b.phase, metric) for s in seeds]
    items = sorted(set.intersection(*[set(v.index) for v in va + vb]))
    if not items:
        raise ValueError(f"the arms share no {metric} item")
    return (np.array([v.loc[items].to_numpy() for v in va]), np.array([v.loc[items].to_numpy() for v in vb]), seeds)


def bootstrap_diff(xa: np.ndarray, xb: np.ndarray, n_boot: int = 4000, level: float = 0.95,
                   rng: np.random.Generator | None = None) -> tuple[float, float]:
    """Percentile interval of mean(xa - xb) resampling seeds (rows), then items (columns) with one item draw shared
    by all seeds of a replicate, so each item stays paired with itself across arms and seeds."""
    rng = rng or np.random.default_rng(0)
    d = xa - xb
    n_seeds, n_items = d.shape
    rows = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    cols = rng.integers(0, n_items, size=(n_boot, n_items))
    stats = np.array([d[r][:, c].mean() for r, c in zip(rows, cols)])
    tail = (1 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def mcnemar_p(xa: np.ndarray, xb: np.ndarray) -> tuple[float, int, int]:
    """Exact two-sided McNemar test on 0/1 pairs: (p, #a right & b wrong, #a wrong & b right)."""
    from scipy import stats

    a_only = int(((xa == 1) & (xb == 0)).sum())
    b_only = int(((xa == 0) & (xb == 1)).sum())
    if a_only + b_only == 0:
        return 1.0, 0, 0
    return float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue), a_only, b_only


def compare(a: Arm, b: Arm, metric: str, n_boot: int = 4000, seed: int = 0) -> dict:
    """Arm a minus arm b on ``metric``, paired by seed and item (see the module docstring)."""
    from scipy import stats

    xa, xb, seeds = paired_items(a, b, metric)
    binary = ITEM_METRICS[metric][2]
    lo, hi = bootstrap_diff(xa, xb, n_boot, rng=np.random.default_rng(seed))
    out = {"metric": metric, "n_seeds": len(seeds), "n_items": xa.shape[1], "a": float(xa.mean()),
           "b": float(xb.mean()), "diff": float((xa - xb).mean()), "lo": lo, "hi": hi,
           "seed_diffs": " ".join(f"{v:+.3f}" for v in (xa - xb).mean(axis=1))}
    if binary:
        out["p"], out["a_only"], out["b_only"] = mcnemar_p(xa, xb)
        out["test"] = "McNemar exact"
    else:
        d = (xa - xb).mean(axis=0)
        out["p"] = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
        out["test"] = "Wilcoxon signed-rank"
    return out


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN and does not count towards the family's size)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def compare_family(claims: Sequence[dict], n_boot: int = 4000, min_seeds: int = 1,
                   alpha: float = 0.05) -> pd.DataFrame:
    """One row per claim ``{"claim", "a": Arm, "b": Arm, "metric"}`` with :func:`compare`'s columns, ``p_holm``
    over the claims that could be tested, and ``holds``: p_holm < ``alpha`` *and* a bootstrap interval that
    excludes 0. McNemar pools the (seed, item) pairs and so ignores how much the seeds disagree; the interval
    resamples seeds too, so a claim that one seed contradicts does not hold. A claim whose arms share fewer than
    ``min_seeds`` seeds (a sweep still running) gets a ``missing`` note and no p-value, and does not count
    towards the family."""
    rows = []
    for c in claims:
        shared = sorted(set(c["a"].runs) & set(c["b"].runs))
        if len(shared) < min_seeds:
            rows.append({"claim": c["claim"], "metric": c["metric"], "n_seeds": len(shared), "p": math.nan,
                         "missing": f"{len(shared)} of {min_seeds} seeds finished"})
            continue
        rows.append({"claim": c["claim"], **compare(c["a"], c["b"], c["metric"], n_boot), "missing": ""})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].to_numpy())
    table["holds"] = (table["p_holm"] < alpha) & ((table.get("lo", 0) > 0) | (table.get("hi", 0) < 0))
    return table


def write_claims(table: pd.DataFrame, out_dir: str | os.PathLike) -> str:
    """``claims.csv`` and the forest plot ``claims.png`` into ``out_dir``; returns a one-line summary."""
    from layerprobe.plot.study import claims_panel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "claims.csv", index=False, float_format="%.6g")
    claims_panel(table, out / "claims.png")
    tested = table[table["missing"] == ""]
    return f"{len(tested)} of {len(table)} claims tested, {int(tested['holds'].sum())} hold; {out / 'claims.csv'}"


def sweep_results(folder: str | os.PathLike) -> pd.DataFrame:
    """A sweep folder's results.csv; an empty table while no cell has finished."""
    f = Path(folder) / "results.csv"
    return pd.read_csv(f) if f.is_file() else pd.DataFrame()


def sweep_arm(results: pd.DataFrame, folder: str | os.PathLike, phase: str = "sft", **match) -> Arm:
    """The arm of a sweep's results table whose columns equal ``match`` (e.g. condition="mlp"), by seed; no runs
    when no finished cell matches yet."""
    if results.empty:
        return Arm({}, phase)
    rows = results
    for key, value in match.items():
        if key not in rows.columns:
            raise ValueError(f"results have no column {key!r}; columns: {', '.join(map(str, results.columns))}")
        rows = rows[rows[key].astype(str) == str(value)]
    if rows["seed"].duplicated().any():
        raise ValueError(f"{match} matches several cells per seed in {folder}; add the missing columns")
    return Arm({int(s): Path(folder) / c for s, c in zip(rows["seed"], rows["cell"])}, phase)
