"""Early warning: a run's final forgetting and style, predicted from the first part of its SFT.

From the records of a run trained with probes during SFT (``--sft.probe_every``), :func:`early_features` takes the
window of the first ``window`` share of SFT's steps (20 %: steps up to 10 of 50) and reads, at its last probe step:

- ``probe.<quantity>.<kind>``: each probe kind's mean change since step 0 (``probe_logprob`` of cloze, held-out
  cloze and QA answers; ``style_logodds`` of the held-out instructions);
- ``drift.<block>``, ``update.<block>``, ``grad.<block>``: the recorder's drift ratio at the window's last recorded
  step, and update ratio and gradient norm averaged over the window, each the mean over the block's trained
  modules (attention, MLP), and 0 for a block that did not train (the recorder writes no rows for frozen weights:
  LoRA on the attention alone has no MLP rows).

:func:`final_targets` gives what is predicted: the same probe means' change at the last probe step (after the last
optimizer step), and every outcome of ``layerprobe.evaluation.outcomes`` / ``PHASE.KEY`` of summary.json the caller
names.

:func:`validate` fits a ridge regression (standardised features, penalty ``ridge``) leaving one group out at a
time (a condition, an arm, a world, a seed: whatever varies in the column named), and scores it against two
baselines: the training runs' mean, and for a probe target the value at the window carried forward unchanged.
The summary gives each method's mean absolute error over runs, and the model's difference from each baseline with
a t interval over the held-out groups (a group's runs share what was left out, so the group is the unit)::

    table = feature_table(["runs/dose_response"])
    preds, summary = validate(table, "final.probe_logprob.cloze_heldout", groups="arm")
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from layerprobe.evaluation.outcomes import read_outcomes
from layerprobe.record.records import load_records

WINDOW = 0.2
RIDGE = 1.0
PROBE_QUANTITIES = ("probe_logprob", "style_logodds")
RECORDED = {"drift_ratio": "drift", "update_ratio": "update", "grad_norm": "grad"}
BLOCKS = ("attn", "mlp")
BASELINES = ("mean", "carried")


def _probe_means(records: pd.DataFrame, phase: str) -> pd.DataFrame:
    d = records[
        (records["phase"] == phase)
        & (records["block"] == "probe")
        & (records["param"] == "")
        & records["quantity"].isin(PROBE_QUANTITIES)
    ]
    return d.assign(name=d["quantity"] + "." + d["module"]).pivot_table(index="step", columns="name", values="value")


def window_step(records: pd.DataFrame, window: float = WINDOW, phase: str = "sft") -> int:
    """The window's last probe step: the last probe step at or before ``window`` x the phase's last probe step."""
    means = _probe_means(records, phase)
    if means.empty or means.index.max() <= 0:
        raise ValueError(f"expected probe rows during {phase!r} (train with --{phase}.probe_every N), found none")
    last = int(means.index.max())
    inside = [s for s in means.index if 0 < s <= window * last]
    if not inside:
        raise ValueError(
            f"no probe step inside the first {window:.0%} of {last} steps (probe steps "
            f"{list(means.index)}); probe more often (--{phase}.probe_every) or widen the window"
        )
    return int(max(inside))


def early_features(records: pd.DataFrame, step: int, phase: str = "sft") -> dict[str, float]:
    """The features of one run at its window's last probe ``step`` (see the module docstring)."""
    means = _probe_means(records, phase)
    out = {f"probe.{k}": float(means.loc[step, k] - means.loc[0, k]) for k in means.columns}
    rec = records[
        (records["phase"] == phase)
        & (records["param"] == "")
        & (records["module"] != "")
        & records["block"].isin(BLOCKS)
        & (records["step"] <= step)
    ]
    for quantity, short in RECORDED.items():
        q = rec[rec["quantity"] == quantity]
        if q.empty:
            continue
        if quantity == "drift_ratio":
            q = q[q["step"] == q["step"].max()]
        for block in BLOCKS:
            values = q[q["block"] == block]["value"]
            out[f"{short}.{block}"] = float(values.mean()) if len(values) else 0.0
    return out


def final_targets(records: pd.DataFrame, phase: str = "sft") -> dict[str, float]:
    """Each probe mean's change from step 0 to the last probe step: ``final.probe.<quantity>.<kind>``."""
    means = _probe_means(records, phase)
    last = means.index.max()
    return {f"final.probe.{k}": float(means.loc[last, k] - means.loc[0, k]) for k in means.columns}


def run_row(
    run_dir: str | os.PathLike, window: float = WINDOW, outcomes: Sequence[str] = (), phase: str = "sft"
) -> dict:
    """One run's row of the feature table: identity (run, seed, toy.seed), window step, features and targets."""
    run = Path(run_dir)
    records = load_records(run, quantities=[*PROBE_QUANTITIES, *RECORDED])
    step = window_step(records, window, phase)
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    row = {
        "run": run.name,
        "seed": config.get("seed"),
        "world": (config.get("toy") or {}).get("seed"),
        "window_step": step,
        **early_features(records, step, phase),
        **final_targets(records, phase),
    }
    if outcomes and (run / "summary.json").is_file():
        row.update(read_outcomes(json.loads((run / "summary.json").read_text()), outcomes))
    return row


def feature_table(
    sweep_dirs: Sequence[str | os.PathLike], window: float = WINDOW, outcomes: Sequence[str] = (), phase: str = "sft"
) -> pd.DataFrame:
    """One row per finished run (a folder with summary.json and probe rows) of the sweeps, with the sweep's
    results.csv columns ``condition`` and ``group`` where it has them."""
    rows = []
    for sweep in map(Path, sweep_dirs):
        results = pd.read_csv(sweep / "results.csv") if (sweep / "results.csv").is_file() else pd.DataFrame()
        labels = (
            results.set_index("cell")[[c for c in ("condition", "group") if c in results]]
            if "cell" in results
            else pd.DataFrame()
        )
        for run in sorted(p.parent for p in sweep.glob("*/summary.json")):
            row = run_row(run, window, outcomes, phase)
            if run.name in labels.index:
                row.update(labels.loc[run.name].to_dict())
            rows.append(row)
    if not rows:
        raise ValueError(
            f"expected finished runs (summary.json) with probe rows under {list(map(str, sweep_dirs))}, found none"
        )
    return pd.DataFrame(rows)


def _ridge(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    z = (x - mu) / sd
    beta = np.linalg.solve(z.T @ z + ridge * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    return mu, sd, beta, float(y.mean())


def validate(
    table: pd.DataFrame, target: str, groups: str, features: Sequence[str] | None = None, ridge: float = RIDGE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Leave-one-group-out predictions of ``target`` (per run: truth, model, baselines) and the summary (one row
    per method: mae; per baseline: the model's MAE minus the baseline's, mean over groups with its t interval)."""
    if target not in table:
        raise ValueError(f"unknown target {target!r}; the table has {', '.join(c for c in table if '.' in c)}")
    if groups not in table or table[groups].nunique() < 3:
        raise ValueError(
            f"expected a column {groups!r} with at least 3 groups to leave out, got "
            f"{table[groups].nunique() if groups in table else 'no such column'}"
        )
    features = list(features or [c for c in table if c.split(".")[0] in ("probe", *RECORDED.values())])
    data = table.dropna(subset=[target, *features]).reset_index(drop=True)
    carried = target.removeprefix("final.") if target.startswith("final.") else None
    preds = _held_out_predictions(data, target, groups, features, ridge, carried)
    return preds, _error_summary(preds, target, groups)


def _held_out_predictions(
    data: pd.DataFrame, target: str, groups: str, features: list[str], ridge: float, carried: str | None
) -> pd.DataFrame:
    """Per run: the truth, the ridge model fitted on the other groups, and the baselines (their mean, the value
    carried over from before SFT)."""
    rows = []
    for g in sorted(data[groups].unique(), key=str):
        test, train = data[data[groups] == g], data[data[groups] != g]
        mu, sd, beta, y0 = _ridge(train[features].to_numpy(float), train[target].to_numpy(float), ridge)
        pred = y0 + ((test[features].to_numpy(float) - mu) / sd) @ beta
        rows.append(
            pd.DataFrame(
                {
                    "run": test["run"],
                    "group": g,
                    "truth": test[target],
                    "model": pred,
                    "mean": train[target].mean(),
                    "carried": test.get(carried, np.nan),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _error_summary(preds: pd.DataFrame, target: str, groups: str) -> pd.DataFrame:
    """Each method's MAE, and per baseline the model's MAE minus the baseline's (mean over groups, t interval)."""
    summary = []
    err = {m: (preds[m] - preds["truth"]).abs() for m in ("model", *BASELINES)}
    for m, e in err.items():
        summary.append(
            {
                "target": target,
                "groups": groups,
                "method": m,
                "mae": float(e.mean()),
                "n_runs": len(e),
                "n_groups": preds["group"].nunique(),
            }
        )
    for b in BASELINES:
        per_group = (err["model"] - err[b]).groupby(preds["group"]).mean().dropna()
        if len(per_group) < 2:
            continue
        t = stats.ttest_1samp(per_group, 0.0)
        ci = t.confidence_interval(0.95)
        summary.append(
            {
                "target": target,
                "groups": groups,
                "method": f"model - {b}",
                "mae": float(per_group.mean()),
                "lo": float(ci.low),
                "hi": float(ci.high),
                "p": float(t.pvalue),
                "n_runs": len(preds),
                "n_groups": len(per_group),
            }
        )
    return pd.DataFrame(summary)
