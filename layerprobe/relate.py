"""Relate per-(layer, block) features of the runs of a sweep to their outcomes (Spearman, exact for few runs).

A sweep is a set of run folders (each with ``records/`` and ``summary.json``). For every run, features are
computed per ``(phase, layer, block)`` from the aggregated records rows (``param == ""``, ``module == ""``):

- ``final_drift``: ``drift_ratio`` at the last recorded step of the phase, ||W(end) - W(start)|| / ||W(start)||.
- ``update_path``: sum_i u(s_i) * (s_i - s_{i-1}) over the recorded steps s_1 < s_2 < ... of ``update_ratio``
  (s_0 = 0): each recorded one-step update ratio stands for the steps since the previous record, so the value
  estimates the summed update ratio over all optimizer steps whatever the recording interval (``every:N`` or
  log-spaced). Steps after the last record are not counted.
- ``grad_mass``: sqrt(sum_i g(s_i)^2 * (s_i - s_{i-1})) over the recorded pre-clip ``grad_norm``, the same
  weighting: the root of the summed squared gradient norm over the phase.
- every quantity of the diff records (phase ``diff``: ``rel_change``, ``undo_frac``, ``cos_cpt_sft``, ...).

A frozen (layer, block) -- every module of it has ``n_trainable == 0`` in the recorder's audit -- has no drift or
update rows; its ``final_drift`` and ``update_path`` are 0 (it did not move), its ``grad_mass`` stays missing
(never measured). Outcomes come from ``summary.json`` (see :data:`OUTCOMES`; ``sft.KEY``/``cpt.KEY`` read any key).

For each (feature, phase, layer, block) x outcome: Spearman's rho over the runs that have both values, and a
two-sided p-value. With n <= :data:`EXACT_MAX_RUNS` runs the p-value is exact: the share of all n! orderings of
the outcome's ranks whose |rho| reaches the observed one (ties handled, as ``scipy.stats.permutation_test`` does).
Above that it is scipy's t approximation (what ``scipy.stats.spearmanr`` reports). The exact test shows why
few runs cannot support a claim: the smallest possible two-sided p is 2 / n!, which is 0.083 for 4 runs and
0.017 for 5, so below :data:`MIN_RUNS` = 5 no cell can reach p < 0.05 however strong the relation
(scipy's t approximation would say p = 0 for a perfect rank agreement of 3 runs). Many cells are tested at
once, so q-values (Benjamini-Hochberg, over every test in the table) are reported beside p.

This module never imports torch.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from layerprobe.outcomes import OUTCOMES, read_outcomes
from layerprobe.outcomes import is_dotted as _dotted
from layerprobe.records import load_records
from layerprobe.rundir import SUMMARY, find_runs
RECORD_FEATURES = ("final_drift", "update_path", "grad_mass")
_SOURCE = {"final_drift": "drift_ratio", "update_path": "update_ratio", "grad_mass": "grad_norm"}
_ZERO_WHEN_FROZEN = ("final_drift", "update_path")
MIN_RUNS = 5
EXACT_MAX_RUNS = 9
TABLE_COLUMNS = ("feature", "phase", "layer", "block", "outcome", "rho", "p", "q", "n_runs", "p_method")
_CELL = ["feature", "phase", "layer", "block"]


@dataclass
class RelateConfig:
    features: tuple[str, ...] = field(default=(), metadata={
        "help": f"features to relate: {', '.join(RECORD_FEATURES)} or a diff quantity (rel_change, undo_frac, "
                "cos_cpt_sft, ...); empty = all present"})
    phases: tuple[str, ...] = field(default=(), metadata={
        "help": "record phases to take features from (cpt, sft); diff quantities are always phase 'diff'; "
                "empty = all present"})
    outcomes: tuple[str, ...] = field(default=(), metadata={
        "help": f"outcomes: {', '.join(OUTCOMES)} or PHASE.KEY of summary.json (sft.eos_rate); "
                "empty = every named outcome the summaries hold"})
    min_runs: int = field(default=MIN_RUNS, metadata={
        "help": "fewer runs than this: say plainly there are too few runs for a claim (5 is the least for which "
                "an exact two-sided Spearman test can give p < 0.05)"})
    alpha: float = field(default=0.05, metadata={"help": "q-value threshold reported as a finding"})

    def __post_init__(self):
        for name in ("features", "phases", "outcomes"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            setattr(self, name, tuple(value))
        for o in self.outcomes:
            if o not in OUTCOMES and not _dotted(o):
                raise ValueError(f"unknown outcome {o!r}: expected one of {', '.join(OUTCOMES)} or PHASE.KEY "
                                 "of summary.json such as sft.eos_rate")
        if not isinstance(self.min_runs, int) or self.min_runs < 3:
            raise ValueError(f"min_runs must be an int >= 3 (Spearman needs 3 runs to vary), got {self.min_runs!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha!r}")


@dataclass
class RelateResult:
    table: pd.DataFrame       # TABLE_COLUMNS, one row per (feature, phase, layer, block) x outcome
    features: pd.DataFrame    # run, feature, phase, layer, block, value
    outcomes: pd.DataFrame    # one row per run, one column per outcome
    n_runs: int
    notes: list[str]          # plain sentences: too few runs, constant outcomes, dropped runs, findings

    def findings(self, alpha: float = 0.05) -> pd.DataFrame:
        return self.table[self.table["q"] < alpha].sort_values("q")


# ------------------------------------------------------------------------------------------ runs and features

def run_features(records: pd.DataFrame) -> pd.DataFrame:
    """Features per (phase, layer, block) of one run's records (columns feature, phase, layer, block, value)."""
    cells = records[(records["param"] == "") & (records["module"] == "") & (records["block"] != "")]
    parts = []
    for feature in RECORD_FEATURES:
        d = cells[(cells["quantity"] == _SOURCE[feature]) & (cells["phase"] != "diff")]
        if d.empty:
            continue
        d = d.sort_values("step")
        keys = ["phase", "layer", "block"]
        if feature == "final_drift":
            v = d.groupby(keys, sort=True).last()["value"]
        else:
            steps = d[["phase", "step"]].drop_duplicates()
            steps = steps.assign(gap=steps.groupby("phase")["step"].diff().fillna(steps["step"]))
            d = d.merge(steps, on=["phase", "step"])
            if feature == "update_path":
                v = (d["value"] * d["gap"]).groupby([d[k] for k in keys]).sum()
            else:
                v = np.sqrt((d["value"] ** 2 * d["gap"]).groupby([d[k] for k in keys]).sum())
        parts.append(v.rename("value").reset_index().assign(feature=feature))
    diff = cells[cells["phase"] == "diff"]
    if not diff.empty:
        parts.append(diff.groupby(["quantity", "phase", "layer", "block"])["value"].last().reset_index()
                     .rename(columns={"quantity": "feature"}))
    if not parts:
        return pd.DataFrame(columns=["feature", "phase", "layer", "block", "value"])
    out = pd.concat(parts, ignore_index=True)
    return out[["feature", "phase", "layer", "block", "value"]]


def frozen_cells(records: pd.DataFrame) -> pd.DataFrame:
    """(phase, layer, block) whose modules all had no trainable parameter, from the recorder's audit rows."""
    audit = records[(records["quantity"] == "n_trainable") & (records["param"] == "") & (records["module"] != "")]
    per = audit.groupby(["phase", "layer", "block"])["value"].sum().reset_index()
    return per[per["value"] == 0][["phase", "layer", "block"]]


def collect(runs: Sequence[Path], config: RelateConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(features, outcomes) of every run: features long (run, feature, phase, layer, block, value), outcomes wide."""
    root = Path(os.path.commonpath([str(r) for r in runs])) if len(runs) > 1 else runs[0].parent
    feats, rows = [], []
    wanted_outcomes = list(config.outcomes or OUTCOMES)
    for run in runs:
        name = run.relative_to(root).as_posix()
        try:
            summary = json.loads((run / SUMMARY).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{run / SUMMARY} is not valid JSON ({e}); rerun the evaluation or fix the file") from None
        rows.append({"run": name, **read_outcomes(summary, wanted_outcomes)})
        try:
            records = load_records(run, quantities=_quantities(config))
        except FileNotFoundError:
            continue  # a run without records still has outcomes; it just adds no feature values
        f = run_features(records)
        frozen = frozen_cells(records)
        if not frozen.empty:  # frozen cells did not move: drift and update are 0, not missing
            zeros = pd.concat([frozen.assign(feature=q, value=0.0) for q in _ZERO_WHEN_FROZEN], ignore_index=True)
            recorded = f[["feature", "phase"]].drop_duplicates()  # only where the phase recorded that quantity
            zeros = zeros.merge(recorded, on=["feature", "phase"])
            f = pd.concat([f, zeros], ignore_index=True).drop_duplicates(_CELL, keep="first")
        feats.append(f.assign(run=name))
    outcomes = pd.DataFrame(rows).set_index("run")
    if not config.outcomes:  # keep the named outcomes some summary holds
        outcomes = outcomes.loc[:, outcomes.notna().any()]
    features = (pd.concat(feats, ignore_index=True) if feats
                else pd.DataFrame(columns=["run", "feature", "phase", "layer", "block", "value"]))
    if config.features:
        unknown = sorted(set(config.features) - set(features["feature"]))
        if unknown:
            have = sorted(features["feature"].unique())
            raise ValueError(f"feature(s) {unknown} not found in the runs' records; they have {have}")
        features = features[features["feature"].isin(config.features)]
    if config.phases:
        features = features[features["phase"].isin([*config.phases, "diff"])]
    return features[["run", "feature", "phase", "layer", "block", "value"]].reset_index(drop=True), outcomes


def _quantities(config: RelateConfig) -> list[str] | None:
    """The record quantities to load (None = all: any diff quantity may be a feature)."""
    if not config.features:
        return None
    return ["n_trainable", *(_SOURCE.get(f, f) for f in config.features)]


# ------------------------------------------------------------------------------------------ statistics

def _ranks(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, axis=-1)


def _centered_unit(r: np.ndarray) -> np.ndarray:
    c = r - r.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(c, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, c / norm, np.nan)


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
        null = np.sort(perms @ _centered_unit(sorted_ranks))   # all n! correlations under the null
        rows = np.flatnonzero(which == k)
        obs = rho[rows]
        tol = 1e-12 * np.maximum(1.0, np.abs(obs))
        less = np.searchsorted(null, obs + tol, side="right") / len(null)
        greater = 1.0 - np.searchsorted(null, obs - tol, side="left") / len(null)
        out[rows] = np.minimum(1.0, 2 * np.minimum(less, greater))
    out[~np.isfinite(rho)] = np.nan
    return out


@lru_cache(maxsize=4)
def _orderings(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int8 if n < 128 else np.int64)


def t_spearman_p(rho: np.ndarray, n: int) -> np.ndarray:
    """scipy.stats.spearmanr's two-sided p: Student's t with n - 2 degrees of freedom."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rho * np.sqrt((n - 2) / ((1.0 - rho) * (1.0 + rho)))
    return 2 * stats.t.sf(np.abs(t), n - 2)


def spearman_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Spearman rho and two-sided p of each row of ``x`` (k x n, finite) against ``y`` (n,): (rho, p, method)."""
    n = y.shape[-1]
    if n < 3:
        return np.full(len(x), np.nan), np.full(len(x), np.nan), "none"
    rx, ry = _ranks(x), _ranks(y)
    rho = np.clip(_centered_unit(rx) @ _centered_unit(ry), -1.0, 1.0)
    if n <= EXACT_MAX_RUNS:
        return rho, exact_spearman_p(rho, rx, ry), "exact"
    return rho, t_spearman_p(rho, n), "t"


def correlate(features: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """The tidy table (:data:`TABLE_COLUMNS`): every feature cell against every outcome over the runs having both."""
    wide = features.pivot_table(index=_CELL, columns="run", values="value", aggfunc="first")
    rows = []
    for outcome in outcomes.columns:
        y_all = outcomes[outcome].reindex(wide.columns).to_numpy(dtype=np.float64)
        x_all = wide.to_numpy(dtype=np.float64)
        ok = np.isfinite(x_all) & np.isfinite(y_all)[None, :]
        patterns, which = np.unique(ok, axis=0, return_inverse=True)
        rho = np.full(len(wide), np.nan)
        p = np.full(len(wide), np.nan)
        method = np.full(len(wide), "none", dtype=object)
        for k, mask in enumerate(patterns):
            idx = np.flatnonzero(which.ravel() == k)
            r, pv, m = spearman_rows(x_all[np.ix_(idx, mask)], y_all[mask])
            rho[idx], p[idx], method[idx] = r, pv, m
        part = wide.index.to_frame(index=False)
        part["outcome"] = outcome
        part["rho"], part["p"], part["n_runs"], part["p_method"] = rho, p, ok.sum(axis=1), method
        rows.append(part)
    if not rows:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    table = pd.concat(rows, ignore_index=True)
    table.loc[table["rho"].isna(), "p_method"] = "none"
    table["q"] = bh_qvalues(table["p"].to_numpy())
    return table[list(TABLE_COLUMNS)].astype({"layer": "int64", "n_runs": "int64"})


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


# ------------------------------------------------------------------------------------------ library call

def relate_runs(paths: str | os.PathLike | Iterable[str | os.PathLike], config: RelateConfig | None = None,
           **options) -> RelateResult:
    """Correlate per-(layer, block) features of a sweep's runs with their outcomes (see the module docstring)."""
    if config is not None and options:
        raise ValueError("pass either config= or keyword options, not both")
    cfg = config or RelateConfig(**options)
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    runs = find_runs(paths)
    features, outcomes = collect(runs, cfg)
    notes = []
    if features.empty:
        raise ValueError(f"none of the {len(runs)} runs has feature rows: expected records of drift_ratio, "
                         "update_ratio or grad_norm (train with --record) or diff records (phase 'diff')")
    if outcomes.empty or outcomes.shape[1] == 0:
        raise ValueError(f"none of the {len(runs)} summaries holds the outcomes {list(cfg.outcomes or OUTCOMES)}; "
                         f"expected {SUMMARY} with 'cpt' and 'sft' entries (cloze_acc, qa_acc, gozaru_rate, ...)")
    for o in outcomes.columns:
        col = outcomes[o].dropna()
        missing = outcomes.index[outcomes[o].isna()].tolist()
        if missing:
            notes.append(f"outcome {o}: missing in {len(missing)} run(s) ({', '.join(missing[:5])}), left out")
        if len(col) >= 2 and col.nunique() == 1:
            notes.append(f"outcome {o} is the same ({col.iloc[0]:.4g}) in every run: nothing can correlate with it")
    table = correlate(features, outcomes)
    n = int(table["n_runs"].max()) if len(table) else 0
    if n < cfg.min_runs:
        notes.insert(0, f"too few runs for a claim: {n} run(s) (fewer than {cfg.min_runs}); with n runs the smallest "
                        f"p-value an exact two-sided Spearman test can give is 2/n! = {min_exact_p(max(n, 1)):.3g}")
    else:
        hits = table[table["q"] < cfg.alpha]
        tested = int(table["p"].notna().sum())
        notes.append(f"{len(hits)} of {tested} tests pass q < {cfg.alpha} (Benjamini-Hochberg over all of them)"
                     if len(hits) else f"no cell passes q < {cfg.alpha} (Benjamini-Hochberg over {tested} tests): "
                                       "no claim")
    return RelateResult(table=table, features=features, outcomes=outcomes, n_runs=len(runs), notes=notes)


# ------------------------------------------------------------------------------------------ figures

def heatmap_rho(table: pd.DataFrame, feature: str, phase: str, outcome: str, out_png: str | os.PathLike,
                alpha: float = 0.05) -> Path:
    """Layer x block heatmap of rho for one (feature, phase, outcome); '*' marks q < alpha (drawn by
    :func:`layerprobe.plot.effects.heatmap_rho`)."""
    from layerprobe.plot.effects import heatmap_rho as draw

    return draw(table, feature, phase, outcome, out_png, alpha)


def write_outputs(result: RelateResult, out_dir: str | os.PathLike, alpha: float = 0.05) -> list[Path]:
    """The table as ``relate.csv`` and one heatmap per (feature, phase, outcome) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "relate.csv"]
    result.table.to_csv(paths[0], index=False)
    combos = result.table[["feature", "phase", "outcome"]].drop_duplicates().itertuples(index=False)
    for feature, phase, outcome in combos:
        sub = result.table[(result.table["feature"] == feature) & (result.table["phase"] == phase)
                           & (result.table["outcome"] == outcome)]
        if sub["rho"].notna().any():
            paths.append(heatmap_rho(result.table, feature, phase, outcome,
                                     out / f"rho_{feature}_{phase}_{outcome}.png", alpha))
    return paths
