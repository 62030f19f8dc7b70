"""Relate per-(layer, block) features of the runs of one or more sweeps to their outcomes, respecting the design.

**Runs and their design.** Each path is a sweep folder (a folder of run folders, each with ``records/`` and
``summary.json``) or a run folder. Every run gets

- ``study``: the sweep folder it came from (a run folder named directly: its parent folder);
- ``method``: how SFT trained, ``lora`` or ``full`` (``sft.method`` of the run's ``config.yaml``; ``unknown``
  without one);
- ``cpt_group``: the CPT it was fine-tuned from, the CPT stage's fingerprint in ``cpt/DONE``
  (:mod:`layerprobe.fingerprint`: equal for the runs that trained or reused the same CPT, across sweeps too);
  without one, ``run:<run>`` (a group of its own);
- ``total_drift``: how far SFT moved the whole model, ||W_sft - W_cpt|| / ||W_cpt|| over all weights, frozen
  ones counting as unmoved -- :func:`layerprobe.drift.phase_drift` ``(run, "sft", module_norms(RUN/merged))["all"]``
  (``total_drift_from = "checkpoint"``). Without the merged checkpoint, from the records alone
  (``"records"``): sqrt(sum_m d_m^2 n_m^2 / sum_m n_m^2) over modules m, with d_m the module's last SFT
  ``drift_ratio`` and n_m its start norm, read as the first SFT ``weight_norm`` (after one recorded update:
  off by at most that update) or, for a module SFT froze, its last CPT ``weight_norm`` (CPT's end is SFT's
  start); modules with neither (never trained) are left out of the denominator, so this can overstate the
  drift of a model with untrained weights (the source says how many were left out).

**Features** per ``(phase, layer, block)`` from the aggregated records rows (``param == ""``, ``module == ""``):

- ``final_drift``: ``drift_ratio`` at the last recorded step of the phase, ||W(end) - W(start)|| / ||W(start)||.
- ``update_path``: sum_i u(s_i) * (s_i - s_{i-1}) over the recorded steps s_1 < s_2 < ... of ``update_ratio``
  (s_0 = 0): each recorded one-step update ratio stands for the steps since the previous record, so the value
  estimates the summed update ratio over all optimizer steps whatever the recording interval (``every:N`` or
  log-spaced). Steps after the last record are not counted.
- ``grad_mass``: sqrt(sum_i g(s_i)^2 * (s_i - s_{i-1})) over the recorded pre-clip ``grad_norm``, the same
  weighting: the root of the summed squared gradient norm over the phase.
- every quantity of the diff records (phase ``diff``: ``rel_change``, ``undo_frac``, ``cos_cpt_sft``, ...).

**Frozen is a category, not zero.** A (layer, block) whose modules all have ``n_trainable == 0`` in a phase's
audit did not move *by design*: its features of that phase (and the diff quantities of SFT's change, ``*_bc``,
``cos_cpt_sft``, ``undo_frac``, ``null_sd_*``, for a block SFT froze) get ``frozen = True`` and are left out of
that cell's correlations, never entered as 0 (a LoRA run that did not adapt the MLP would otherwise pull the MLP's
correlation towards "no drift, little forgetting"). ``n_frozen`` counts the runs left out so.

**Strata.** Correlations are given for ``all`` runs and, when the design varies, per ``method=<m>``, per
``study=<s>`` and per ``study=<s>,method=<m>`` (a stratum with the same runs as an earlier one is not repeated):
pooling LoRA and full fine-tuning can make a relation that neither shows alone.

**Statistics**, per stratum and (feature, phase, layer, block) x outcome, over the stratum's runs having both
values (frozen ones excluded):

- ``rho``: Spearman's rho. ``partial_rho``: the partial Spearman correlation controlling for ``total_drift``
  (does the place matter beyond the size of the SFT step?): the Pearson correlation of the residuals of rank(x)
  and rank(y) after an ordinary least-squares fit of each on [1, rank(total_drift)], ranks over the runs having
  all three.
- p-values by permutation, because runs sharing a CPT are not independent:
  *within CPT groups* when the within-group orderings of the outcome number at least ``min_within`` (40, so that an exact within-group p can reach 0.025) and
  some group has both x and y varying: the outcome (for ``partial_rho``: its residual) is permuted only among
  runs of the same CPT, so the null keeps every CPT's effect and the test asks whether x relates to y among runs
  of one CPT; otherwise *between CPT groups*: x, y (and the control) are averaged per CPT group and the same
  statistic over the group means is tested by permuting the groups' outcomes (each run its own group: the plain
  permutation test over runs). This is the case for CPT-phase features, which runs of one CPT share. All
  orderings are enumerated when there are at most ``permutations`` (2000) of them -- or for rho of up to 9
  units, at most 9! orderings, computed once per tie pattern -- else ``permutations`` random ones (seed
  ``seed``). Two-sided p = min(1, 2 min(P(T* <= t), P(T* >= t))) as ``scipy.stats.permutation_test`` defines it
  (with random orderings the observed one is counted once in each tail, 2 (1 + k) / (1 + B)). A p below
  ``alpha`` from random orderings is refined with more of them (seed + 1), up to B = 4 m / alpha in all for the
  m tests of the stratum, so that the smallest p, 2 / (B + 1), gives q <= alpha / 2 even for a single relation
  among m tests (with 2000 orderings and the ~2600 tests of a 30-layer model no cell could pass
  Benjamini-Hochberg); whether a row is refined depends on its first p alone, so its p stays valid.
  ``p_method`` names the scheme: ``within-cpt`` / ``cpt-groups`` / ``runs`` (every group one run), ``exact`` or
  ``perm``.
- ``n_runs`` (runs in the correlation), ``n_groups`` (CPT groups among them, the honest lower bound of the
  number of independent units) and ``n_eff``: n / (1 + (m0 - 1) icc_x icc_y), the design effect of a
  correlation under clustering (Scott & Holt 1982), with m0 = (n - sum_g n_g^2 / n) / (G - 1) and each icc the
  one-way ANOVA intraclass correlation of the ranks within CPT groups, clipped to [0, 1] (n when every group is
  one run or all runs share one CPT).
- ``q``, ``partial_q``: Benjamini-Hochberg over every test of the stratum.

Few units cannot support a claim: the smallest possible two-sided exact p is 2 / n!, 0.083 for 4 runs and 0.017
for 5, so below :data:`MIN_RUNS` = 5 no cell can reach p < 0.05 however strong the relation.

**Inputs kept.** :func:`write_outputs` writes, beside ``relate.csv``, ``features.parquet`` (:data:`FEATURE_COLUMNS`
+ one column per outcome; about 0.3 MB for 63 runs of a 30-layer model): :func:`relate_features` recomputes
the same table from it alone.

This module never imports torch (reading a merged checkpoint's norms for ``total_drift`` does).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from layerprobe import rundir
from layerprobe.outcomes import OUTCOMES, harness_drops, read_outcomes
from layerprobe.outcomes import is_dotted as _dotted
from layerprobe.records import load_records
from layerprobe.rundir import SUMMARY, find_runs

RECORD_FEATURES = ("final_drift", "update_path", "grad_mass")
_SOURCE = {"final_drift": "drift_ratio", "update_path": "update_ratio", "grad_mass": "grad_norm"}
_SFT_CHANGE = ("cos_cpt_sft", "undo_frac", "null_sd_cos", "null_sd_undo_frac")  # diff quantities of SFT's change
MIN_RUNS = 5
EXACT_MAX_RUNS = 9  # rho of up to 9 units: all 9! orderings (once per tie pattern)
PERMUTATIONS = 2000
MIN_WITHIN = 40  # 2 / 0.05: with fewer orderings an exact within-group p cannot fall below 0.025
REFINE = 4  # a p below alpha is refined to B = REFINE * m / alpha orderings for the m tests of its stratum
CONTROL = "total_drift"
TABLE_FILE = "relate.csv"
FEATURES_FILE = "features.parquet"
DESIGN_COLUMNS = ("study", "method", "cpt_group", "total_drift", "total_drift_from")
FEATURE_COLUMNS = ("run", "study", "method", "cpt_group", "phase", "layer", "block", "feature", "value", "frozen",
                   "total_drift", "total_drift_from")  # then one column per outcome
TABLE_COLUMNS = ("stratum", "feature", "phase", "layer", "block", "outcome", "rho", "p", "q", "partial_rho",
                 "partial_p", "partial_q", "n_runs", "n_frozen", "n_groups", "n_eff", "p_method")
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
        "help": f"outcomes: {', '.join(OUTCOMES)}, PHASE.KEY of summary.json (sft.eos_rate) or drop.KEY (cpt - sft: "
                "drop.lm_eval/hellaswag/acc); "
                "empty = every named outcome the summaries hold, with drop.KEY of each harness score"})
    min_runs: int = field(default=MIN_RUNS, metadata={
        "help": "fewer runs than this: say plainly there are too few runs for a claim (5 is the least for which "
                "an exact two-sided Spearman test can give p < 0.05)"})
    alpha: float = field(default=0.05, metadata={"help": "q-value threshold reported as a finding"})
    permutations: int = field(default=PERMUTATIONS, metadata={
        "help": "random permutations per test when there are more orderings than this (else all are enumerated)"})
    min_within: int = field(default=MIN_WITHIN, metadata={
        "help": "permute within CPT groups only when they allow at least this many orderings of the outcome; "
                "else permute whole groups (their means)"})
    seed: int = field(default=0, metadata={"help": "seed of the random permutations"})

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
        if not isinstance(self.permutations, int) or self.permutations < 100:
            raise ValueError(f"permutations must be an int >= 100, got {self.permutations!r}")
        if not isinstance(self.min_within, int) or self.min_within < 1:
            raise ValueError(f"min_within must be a positive int, got {self.min_within!r}")


@dataclass
class RelateResult:
    table: pd.DataFrame       # TABLE_COLUMNS, one row per stratum x (feature, phase, layer, block) x outcome
    features: pd.DataFrame    # FEATURE_COLUMNS + one column per outcome: what features.parquet holds
    outcomes: pd.DataFrame    # one row per run, one column per outcome
    design: pd.DataFrame      # one row per run: DESIGN_COLUMNS
    n_runs: int
    notes: list[str]          # plain sentences: too few runs, constant outcomes, dropped runs, findings

    def findings(self, alpha: float = 0.05, stratum: str = "all") -> pd.DataFrame:
        t = self.table[self.table["stratum"] == stratum] if stratum else self.table
        return t[t["q"] < alpha].sort_values("q")


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


def mark_frozen(features: pd.DataFrame, frozen: pd.DataFrame) -> pd.DataFrame:
    """``features`` with a ``frozen`` column: True for a phase's record features of a cell that phase froze
    (a row with value NaN added where the records have none) and for the diff quantities of SFT's change of a
    cell SFT froze. Record features are added only for phases that recorded them."""
    f = features.assign(frozen=False)
    if frozen.empty:
        return f
    recorded = f[f["feature"].isin(RECORD_FEATURES)][["feature", "phase"]].drop_duplicates()
    missing = frozen.merge(recorded, on="phase").assign(value=np.nan, frozen=True)
    f = pd.concat([f, missing[f.columns]], ignore_index=True).drop_duplicates(_CELL, keep="first")
    key = pd.MultiIndex.from_frame(f[["phase", "layer", "block"]])
    in_phase = key.isin(pd.MultiIndex.from_frame(frozen)) & f["feature"].isin(RECORD_FEATURES).to_numpy()
    sft = frozen[frozen["phase"] == "sft"]
    in_sft = pd.MultiIndex.from_frame(f[["layer", "block"]]).isin(pd.MultiIndex.from_frame(sft[["layer", "block"]]))
    diff_sft = (f["phase"] == "diff").to_numpy() & f["feature"].map(_sft_change).to_numpy() & in_sft
    f["frozen"] = in_phase | diff_sft
    return f


def _sft_change(quantity: str) -> bool:
    return quantity.endswith("_bc") or quantity in _SFT_CHANGE


def run_design(run: Path, name: str) -> tuple[str, str]:
    """(SFT method, CPT group) of a run folder (see the module docstring)."""
    method = "unknown"
    if rundir.is_run(run):
        sft = rundir.read_config_dict(run).get("sft") or {}
        method = str(sft.get("method", "unknown"))
    fingerprint = (rundir.read_done(run, "cpt") or {}).get("fingerprint")
    return method, str(fingerprint) if fingerprint else f"run:{name}"


def total_drift(run: Path, records: pd.DataFrame, norms: dict | None = None, key: str = "") -> tuple[float, str]:
    """(||W_sft - W_cpt|| / ||W_cpt|| of the whole model, where it came from): see the module docstring.
    ``norms`` caches the merged checkpoint's module norms by ``key`` (runs of one CPT share them)."""
    merged = rundir.stage_dir(run, "merge")
    if any(merged.glob("*.safetensors")):
        from layerprobe.drift import module_norms, phase_drift

        norms = {} if norms is None else norms
        try:
            if key not in norms or not key:
                norms[key] = module_norms(merged)
            return phase_drift(run, "sft", norms[key])["all"], "checkpoint"
        except ValueError:
            pass  # drift of weights the checkpoint lacks, or no drift rows: try the records
    r = records[(records["param"] == "") & (records["module"] != "")]
    keys = ["layer", "block", "module"]
    d = r[(r["phase"] == "sft") & (r["quantity"] == "drift_ratio")]
    if d.empty:
        return math.nan, ""
    d = d[d["step"] == d["step"].max()].set_index(keys)["value"]
    w = r[r["quantity"] == "weight_norm"].sort_values("step")
    start = w[w["phase"] == "sft"].groupby(keys)["value"].first()
    start = start.combine_first(w[w["phase"] == "cpt"].groupby(keys)["value"].last())
    if d.index.difference(start.index).size:
        return math.nan, ""  # a drift without the norm to weight it by
    value = math.sqrt(float(((d * start.reindex(d.index)) ** 2).sum() / (start ** 2).sum()))
    audit = r[(r["phase"] == "sft") & (r["quantity"] == "n_params")].set_index(keys).index.unique()
    left = audit.difference(start.index).size
    return value, "records" + (f" ({left} of {len(audit)} modules without a norm, left out)" if left else "")


def _runs_and_studies(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """(run folder, study) of every run under ``paths``; a study is the folder named (a run: its parent)."""
    found: dict[Path, Path] = {}
    for path in paths:
        folder = path.resolve().parent if rundir.summary_path(path).is_file() else path.resolve()
        for run in find_runs([path]):
            found.setdefault(run, folder)
    folders = list(dict.fromkeys(found.values()))
    names = {f: f.name for f in folders}
    if len(set(names.values())) < len(folders):  # two sweeps of one name: their paths from a common parent
        root = Path(os.path.commonpath([str(f) for f in folders]))
        names = {f: f.relative_to(root).as_posix() if f != root else f.name for f in folders}
    return [(run, names[folder]) for run, folder in found.items()]


def collect(paths: Sequence[str | os.PathLike], config: RelateConfig) -> tuple[pd.DataFrame, list[str]]:
    """The long feature table of every run under ``paths`` (:data:`FEATURE_COLUMNS` + one column per outcome)
    and notes on runs left out."""
    runs = _runs_and_studies([Path(p) for p in paths])
    root = (Path(os.path.commonpath([str(r) for r, _ in runs])) if len(runs) > 1 else runs[0][0].parent)
    wanted_outcomes = list(config.outcomes or OUTCOMES)
    frames, no_records, norms = [], [], {}
    for run, study in runs:
        name = run.relative_to(root).as_posix()
        try:
            summary = json.loads((run / SUMMARY).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{run / SUMMARY} is not valid JSON ({e}); rerun the evaluation or fix the file") from None
        try:
            records = load_records(run, quantities=_quantities(config))
        except FileNotFoundError:
            no_records.append(name)
            continue
        method, group = run_design(run, name)
        drift, source = total_drift(run, records, norms, group)
        f = mark_frozen(run_features(records), frozen_cells(records))
        names = wanted_outcomes if config.outcomes else [*OUTCOMES, *harness_drops(summary)]  # harness: per run
        wanted_outcomes += [n for n in names if n not in wanted_outcomes]
        f = f.assign(run=name, study=study, method=method, cpt_group=group, total_drift=drift,
                     total_drift_from=source, **read_outcomes(summary, names))
        frames.append(f)
    notes = [f"{len(no_records)} run(s) without records, left out: {', '.join(no_records[:5])}"] if no_records else []
    if not frames:
        return pd.DataFrame(columns=[*FEATURE_COLUMNS, *wanted_outcomes]), notes
    table = pd.concat(frames, ignore_index=True)
    table = table[[*FEATURE_COLUMNS, *wanted_outcomes]]
    if not config.outcomes:  # keep the named outcomes some summary holds
        table = table[[c for c in table.columns if c in FEATURE_COLUMNS or table[c].notna().any()]]
    return _tidy(table), notes


def _tidy(table: pd.DataFrame) -> pd.DataFrame:
    """The feature table in one canonical order and dtype (so a table read back from Parquet is the same)."""
    t = table.astype({"layer": "int64", "value": "float64", "frozen": "bool", "total_drift": "float64"})
    for c in ("run", "study", "method", "cpt_group", "phase", "block", "feature", "total_drift_from"):
        t[c] = t[c].astype(str)
    return t.sort_values(["run", *_CELL], kind="stable").reset_index(drop=True)


def _quantities(config: RelateConfig) -> list[str] | None:
    """The record quantities to load (None = all: any diff quantity may be a feature)."""
    if not config.features:
        return None
    return ["n_trainable", "n_params", "drift_ratio", "weight_norm", *(_SOURCE.get(f, f) for f in config.features)]


def write_features(features: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The feature table as Parquet (strings as dictionaries, zstd: well under 1 MB for 63 runs of 30 layers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = features.copy()
    for c in ("run", "study", "method", "cpt_group", "phase", "block", "feature", "total_drift_from"):
        t[c] = t[c].astype("category")
    t.to_parquet(path, index=False, compression="zstd")
    return path


def read_features(path: str | os.PathLike) -> pd.DataFrame:
    """A feature table written by :func:`write_features` (or by ``layerprobe relate``), checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no feature table at {path}: expected the {FEATURES_FILE} that `layerprobe relate` "
                                "writes beside relate.csv")
    t = pd.read_parquet(path)
    missing = [c for c in FEATURE_COLUMNS if c not in t.columns]
    if missing:
        raise ValueError(f"{path} is not a relate feature table: missing columns {missing}; expected "
                         f"{list(FEATURE_COLUMNS)} + one column per outcome")
    for c in t.columns:
        if isinstance(t[c].dtype, pd.CategoricalDtype):
            t[c] = t[c].astype(str)
    return _tidy(t)


# ------------------------------------------------------------------------------------------ strata

def strata(design: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(name, runs) of every stratum: all, then per method, per study, per study and method when these vary;
    a stratum holding the same runs as an earlier one is skipped."""
    runs = sorted(design.index)
    candidates = [("all", runs)]
    methods = sorted(design["method"].unique())
    studies = sorted(design["study"].unique())
    if len(methods) > 1:
        candidates += [(f"method={m}", sorted(design.index[design["method"] == m])) for m in methods]
    if len(studies) > 1:
        candidates += [(f"study={s}", sorted(design.index[design["study"] == s])) for s in studies]
    for s in studies:
        d = design[design["study"] == s]
        if len(methods) > 1 and d["method"].nunique() > 1:
            candidates += [(f"study={s},method={m}", sorted(d.index[d["method"] == m])) for m in methods
                           if (d["method"] == m).any()]
    out, seen = [], set()
    for name, members in candidates:
        if tuple(members) not in seen:
            seen.add(tuple(members))
            out.append((name, members))
    return out


# ------------------------------------------------------------------------------------------ statistics

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


def _tail_counts(xu: np.ndarray, yu: np.ndarray, obs: np.ndarray,
                 perms: np.ndarray | Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """How many orderings (rows of ``perms``, an array or blocks of them) give ``xu @ yu[perm]`` <= and >= ``obs``,
    per row of ``xu``; in chunks, so the null never exceeds a few million numbers."""
    le, ge = np.zeros(len(xu)), np.zeros(len(xu))
    tol = 1e-12 * np.maximum(1.0, np.abs(obs))[:, None]
    chunk = max(1, 4_000_000 // max(len(xu), 1))
    for block in ([perms] if isinstance(perms, np.ndarray) else perms):
        for start in range(0, len(block), chunk):
            null = xu @ yu[block[start:start + chunk]].T
            le += (null <= obs[:, None] + tol).sum(axis=1)
            ge += (null >= obs[:, None] - tol).sum(axis=1)
    return le, ge


def permutation_p(xu: np.ndarray, yu: np.ndarray, obs: np.ndarray, codes: np.ndarray, config: RelateConfig,
                  refine_to: int = 0) -> tuple[np.ndarray, bool]:
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
        null = np.sort(perms @ _centered_unit(sorted_ranks))   # all n! correlations under the null
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
    m0 = (n - (sizes ** 2).sum() / n) / (g - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        icc = (msb - msw) / (msb + (m0 - 1) * msw)
    return np.clip(np.nan_to_num(icc, nan=0.0), 0.0, 1.0)


def effective_n(rx: np.ndarray, ry: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """n / (1 + (m0 - 1) icc_x icc_y) per row of ``rx`` (see the module docstring)."""
    n, sizes = len(ry), np.bincount(codes)
    g = len(sizes)
    if g in (1, n):
        return np.full(len(rx), float(n))
    m0 = (n - (sizes ** 2).sum() / n) / (g - 1)
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


def _group_test(x: np.ndarray, y: np.ndarray, codes: np.ndarray, z: np.ndarray | None, config: RelateConfig,
                refine_to: int) -> tuple[np.ndarray, str]:
    """p of rho (z None) or of the partial rho given z, over the group means, permuting the groups' outcomes."""
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
        return exact_spearman_p(obs, rx, ry), "exact"
    p, exact = permutation_p(xu, yu, obs, np.zeros(g, dtype=int), config, refine_to)
    return p, "exact" if exact else "perm"


def _tests(x: np.ndarray, y: np.ndarray, codes: np.ndarray, z: np.ndarray, config: RelateConfig,
           refine_to: int = 0) -> dict:
    """Every statistic of rows ``x`` (k x n, finite) against ``y`` (n,) for one set of runs (see the docstring)."""
    k, n = x.shape
    out = {"rho": np.full(k, np.nan), "p": np.full(k, np.nan), "partial_rho": np.full(k, np.nan),
           "partial_p": np.full(k, np.nan), "n_eff": np.full(k, np.nan), "p_method": np.full(k, "none", dtype=object)}
    codes = np.unique(codes, return_inverse=True)[1].ravel()
    n_groups = int(codes.max()) + 1 if n else 0
    out["n_groups"] = np.full(k, n_groups)
    if n < 3:
        return out
    rx, ry = _ranks(x), _ranks(y)
    yu = _centered_unit(ry)
    if not np.isfinite(yu).all():  # a constant outcome: nothing can correlate with it
        return out
    out["rho"] = rho = np.clip(_centered_unit(rx) @ yu, -1.0, 1.0)
    out["n_eff"] = effective_n(rx, ry, codes)
    within = _scheme(x, y, codes, config)
    level = "runs" if n_groups == n else "cpt-groups"
    if within.any():
        out["p"][within], exact = permutation_p(_centered_unit(rx[within]), yu, rho[within], codes, config, refine_to)
        out["p_method"][within] = f"within-cpt {'exact' if exact else 'perm'}"
    if (~within).any() and n_groups >= 3:
        out["p"][~within], how = _group_test(x[~within], y, codes, None, config, refine_to)
        out["p_method"][~within] = f"{level} {how}"
    # partial rho given the total SFT drift, over the runs that have one
    has = np.isfinite(z)
    if has.sum() >= 4:
        xs, ys, zs, cs = x[:, has], y[has], z[has], np.unique(codes[has], return_inverse=True)[1].ravel()
        rz = _ranks(zs)
        ex, ey = _residual_unit(_ranks(xs), rz), _residual_unit(_ranks(ys)[None, :], rz)[0]
        if np.isfinite(ey).all():
            out["partial_rho"] = part = np.clip(ex @ ey, -1.0, 1.0)
            within = _scheme(xs, ys, cs, config)
            if within.any():
                out["partial_p"][within] = permutation_p(ex[within], ey, part[within], cs, config, refine_to)[0]
            if (~within).any() and cs.max() + 1 >= 4:
                out["partial_p"][~within] = _group_test(xs[~within], ys, cs, zs, config, refine_to)[0]
    out["p_method"][~np.isfinite(out["p"])] = "none"
    return out


def spearman_rows(x: np.ndarray, y: np.ndarray, config: RelateConfig | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                           str]:
    """Spearman rho and two-sided permutation p of each row of ``x`` (k x n, finite) against ``y`` (n,),
    runs independent: (rho, p, "exact" or "perm")."""
    res = _tests(np.asarray(x, float), np.asarray(y, float), np.arange(len(y)), np.full(len(y), np.nan),
                 config or RelateConfig())
    methods = {m.split()[-1] for m in res["p_method"] if m != "none"}
    return res["rho"], res["p"], methods.pop() if len(methods) == 1 else "none"


def correlate(features: pd.DataFrame, outcomes: pd.DataFrame, design: pd.DataFrame | None = None,
              config: RelateConfig | None = None) -> pd.DataFrame:
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
        design = pd.DataFrame({"study": "", "method": "", "cpt_group": wide.columns, CONTROL: np.nan},
                              index=wide.columns)
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
            ok = np.isfinite(x_all) & np.isfinite(y_all)[None, :]
            patterns, which = np.unique(ok, axis=0, return_inverse=True)
            which = which.ravel()
            part = wide.index.to_frame(index=False)
            res = {c: np.full(len(wide), np.nan) for c in ("rho", "p", "partial_rho", "partial_p", "n_eff",
                                                           "n_groups")}
            res["p_method"] = np.full(len(wide), "none", dtype=object)
            for k, mask in enumerate(patterns):
                idx = np.flatnonzero(which == k)
                got = _tests(x_all[np.ix_(idx, mask)], y_all[mask], codes[mask], z[mask], cfg, refine_to)
                for c in res:
                    res[c][idx] = got[c]
            part.insert(0, "stratum", stratum)
            part["outcome"] = outcome
            for c, v in res.items():
                part[c] = v
            part["n_runs"] = ok.sum(axis=1)
            part["n_frozen"] = (fr & np.isfinite(y_all)[None, :]).sum(axis=1)
            parts.append(part)
        if parts:
            t = pd.concat(parts, ignore_index=True)
            t["q"], t["partial_q"] = bh_qvalues(t["p"].to_numpy()), bh_qvalues(t["partial_p"].to_numpy())
            rows.append(t)
    if not rows:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    table = pd.concat(rows, ignore_index=True)
    return table[list(TABLE_COLUMNS)].astype({"layer": "int64", "n_runs": "int64", "n_frozen": "int64",
                                              "n_groups": "int64"})


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


# ------------------------------------------------------------------------------------------ library calls

def _config(config: RelateConfig | None, options: dict) -> RelateConfig:
    if config is not None and options:
        raise ValueError("pass either config= or keyword options, not both")
    return config or RelateConfig(**options)


def relate_runs(paths: str | os.PathLike | Iterable[str | os.PathLike], config: RelateConfig | None = None,
                **options) -> RelateResult:
    """Correlate per-(layer, block) features of the runs of one or more sweeps with their outcomes, per stratum
    (see the module docstring)."""
    cfg = _config(config, options)
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    features, notes = collect(paths, cfg)
    if features.empty:
        raise ValueError(f"none of the runs under {', '.join(map(str, paths))} has feature rows: expected records "
                         "of drift_ratio, update_ratio or grad_norm (train with --record) or diff records "
                         "(phase 'diff')")
    return relate_features(features, cfg, notes=notes)


def relate_features(features: pd.DataFrame | str | os.PathLike, config: RelateConfig | None = None,
                    notes: Sequence[str] = (), **options) -> RelateResult:
    """The same table from a feature table alone (a DataFrame or the ``features.parquet`` relate wrote)."""
    cfg = _config(config, options)
    if not isinstance(features, pd.DataFrame):
        features = read_features(features)
    outcome_names = [c for c in features.columns if c not in FEATURE_COLUMNS]
    if cfg.outcomes:
        missing = [o for o in cfg.outcomes if o not in outcome_names]
        if missing:
            raise ValueError(f"outcome(s) {missing} not in the feature table; it holds {outcome_names}")
        outcome_names = list(cfg.outcomes)
    if cfg.features:
        unknown = sorted(set(cfg.features) - set(features["feature"]))
        if unknown:
            have = sorted(features["feature"].unique())
            raise ValueError(f"feature(s) {unknown} not found in the runs' records; they have {have}")
        features = features[features["feature"].isin(cfg.features)]
    if cfg.phases:
        features = features[features["phase"].isin([*cfg.phases, "diff"])]
    features = _tidy(features[[*FEATURE_COLUMNS, *outcome_names]])
    per_run = features.groupby("run", sort=True).first()
    design, outcomes = per_run[list(DESIGN_COLUMNS)], per_run[outcome_names]
    notes = list(notes)
    if outcomes.shape[1] == 0:
        raise ValueError(f"none of the {len(per_run)} summaries holds the outcomes {list(cfg.outcomes or OUTCOMES)}; "
                         f"expected {SUMMARY} with 'cpt' and 'sft' entries (cloze_acc, qa_acc, gozaru_rate, ...)")
    for o in outcomes.columns:
        col = outcomes[o].dropna()
        missing = outcomes.index[outcomes[o].isna()].tolist()
        if missing:
            notes.append(f"outcome {o}: missing in {len(missing)} run(s) ({', '.join(missing[:5])}), left out")
        if len(col) >= 2 and col.nunique() == 1:
            notes.append(f"outcome {o} is the same ({col.iloc[0]:.4g}) in every run: nothing can correlate with it")
    sources = design["total_drift_from"].str.split(" ").str[0].replace("", "missing").value_counts()
    notes.append("total SFT drift (the partial correlation's control): "
                 + ", ".join(f"{v} run(s) from {k}" for k, v in sources.items()))
    table = correlate(features, outcomes, design, cfg)
    alls = table[table["stratum"] == "all"]
    n = int(alls["n_runs"].max()) if len(alls) else 0
    groups = design["cpt_group"].nunique()
    if n < cfg.min_runs:
        notes.insert(0, f"too few runs for a claim: {n} run(s) (fewer than {cfg.min_runs}); with n runs the smallest "
                        f"p-value an exact two-sided Spearman test can give is 2/n! = {min_exact_p(max(n, 1)):.3g}")
    elif groups < cfg.min_runs:
        notes.insert(0, f"only {groups} CPT group(s) among {len(design)} runs: a relation between CPTs rests on "
                        f"{groups} independent units")
    for stratum, t in table.groupby("stratum", sort=False):
        tested, hits = int(t["p"].notna().sum()), int((t["q"] < cfg.alpha).sum())
        partial = int((t["partial_q"] < cfg.alpha).sum())
        notes.append(f"{stratum}: {hits} of {tested} tests pass q < {cfg.alpha} (Benjamini-Hochberg within the "
                     f"stratum), {partial} beyond the total SFT drift (partial rho)" if hits or partial else
                     f"{stratum}: no cell passes q < {cfg.alpha} (Benjamini-Hochberg over {tested} tests): no claim")
    return RelateResult(table=table, features=features, outcomes=outcomes, design=design, n_runs=len(per_run),
                        notes=notes)


# ------------------------------------------------------------------------------------------ outputs

def heatmap_rho(table: pd.DataFrame, feature: str, phase: str, outcome: str, out_png: str | os.PathLike,
                alpha: float = 0.05, value: str = "rho") -> Path:
    """Layer x block heatmaps of ``value`` (rho or partial_rho) for one (feature, phase, outcome), one panel per
    stratum; '*' marks q < alpha (drawn by :func:`layerprobe.plot.effects.heatmap_rho`)."""
    from layerprobe.plot.effects import heatmap_rho as draw

    return draw(table, feature, phase, outcome, out_png, alpha, value=value)


def write_outputs(result: RelateResult, out_dir: str | os.PathLike, alpha: float = 0.05,
                  figures: bool = True) -> list[Path]:
    """``relate.csv``, ``features.parquet`` (the inputs, to recompute the table without the run folders) and,
    with ``figures``, heatmaps of rho and of the partial rho per (feature, phase, outcome) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / TABLE_FILE]
    result.table.to_csv(paths[0], index=False)
    paths.append(write_features(result.features, out / FEATURES_FILE))
    if not figures:
        return paths
    t = result.table
    for feature, phase, outcome in t[["feature", "phase", "outcome"]].drop_duplicates().itertuples(index=False):
        sub = t[(t["feature"] == feature) & (t["phase"] == phase) & (t["outcome"] == outcome)]
        for value, prefix in (("rho", "rho"), ("partial_rho", "partial")):
            if sub[value].notna().any():
                paths.append(heatmap_rho(t, feature, phase, outcome, out / f"{prefix}_{feature}_{phase}_{outcome}.png",
                                         alpha, value))
    return paths
