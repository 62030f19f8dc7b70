"""The inputs of :mod:`layerprobe.analyse.relate`: per-(layer, block) features of each run from its records, the run's
design (study, method, CPT group, total drift), the feature table on disk, and the strata of runs."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from layerprobe.analyse.relate_config import (
    _CELL,
    _SFT_CHANGE,
    _SOURCE,
    FEATURE_COLUMNS,
    FEATURES_FILE,
    RECORD_FEATURES,
    RelateConfig,
)
from layerprobe.core import run_results, rundir
from layerprobe.core.rundir import SUMMARY
from layerprobe.evaluation.outcomes import OUTCOMES, harness_drops, read_outcomes
from layerprobe.record.records import load_records


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
        parts.append(
            diff.groupby(["quantity", "phase", "layer", "block"])["value"]
            .last()
            .reset_index()
            .rename(columns={"quantity": "feature"})
        )
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
        sft = run_results.read_config_dict(run).get("sft") or {}
        method = str(sft.get("method", "unknown"))
    fingerprint = (rundir.read_done(run, "cpt") or {}).get("fingerprint")
    return method, str(fingerprint) if fingerprint else f"run:{name}"


def total_drift(run: Path, records: pd.DataFrame, norms: dict | None = None, key: str = "") -> tuple[float, str]:
    """(||W_sft - W_cpt|| / ||W_cpt|| of the whole model, where it came from): see the module docstring.
    ``norms`` caches the merged checkpoint's module norms by ``key`` (runs of one CPT share them)."""
    merged = rundir.stage_dir(run, "merge")
    if any(merged.glob("*.safetensors")):
        from layerprobe.weights.drift import module_norms, phase_drift

        cache = {} if norms is None else norms
        try:
            if key not in cache or not key:
                cache[key] = module_norms(merged)
            return phase_drift(run, "sft", cache[key])["all"], "checkpoint"
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
    value = math.sqrt(float(((d * start.reindex(d.index)) ** 2).sum() / (start**2).sum()))
    audit = r[(r["phase"] == "sft") & (r["quantity"] == "n_params")].set_index(keys).index.unique()
    left = audit.difference(start.index).size
    return value, "records" + (f" ({left} of {len(audit)} modules without a norm, left out)" if left else "")


def _runs_and_studies(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """(run folder, study) of every run under ``paths``; a study is the folder named (a run: its parent)."""
    found: dict[Path, Path] = {}
    for path in paths:
        folder = path.resolve().parent if rundir.summary_path(path).is_file() else path.resolve()
        for run in run_results.find_runs([path]):
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
    root = Path(os.path.commonpath([str(r) for r, _ in runs])) if len(runs) > 1 else runs[0][0].parent
    wanted_outcomes = list(config.outcomes or OUTCOMES)
    frames, no_records = [], []
    norms: dict = {}
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
        f = f.assign(
            run=name,
            study=study,
            method=method,
            cpt_group=group,
            total_drift=drift,
            total_drift_from=source,
            **read_outcomes(summary, names),
        )
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
        raise FileNotFoundError(
            f"no feature table at {path}: expected the {FEATURES_FILE} that `layerprobe relate` "
            "writes beside relate.csv"
        )
    t = pd.read_parquet(path)
    missing = [c for c in FEATURE_COLUMNS if c not in t.columns]
    if missing:
        raise ValueError(
            f"{path} is not a relate feature table: missing columns {missing}; expected "
            f"{list(FEATURE_COLUMNS)} + one column per outcome"
        )
    for c in t.columns:
        if isinstance(t[c].dtype, pd.CategoricalDtype):
            t[c] = t[c].astype(str)
    return _tidy(t)


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
            candidates += [
                (f"study={s},method={m}", sorted(d.index[d["method"] == m]))
                for m in methods
                if (d["method"] == m).any()
            ]
    out, seen = [], set()
    for name, members in candidates:
        if tuple(members) not in seen:
            seen.add(tuple(members))
            out.append((name, members))
    return out
