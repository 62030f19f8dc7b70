"""Relate within runs: which block's movement tracks the probes' fall, interval by interval of one run's SFT.

A run trained with probes during SFT (``--sft.probe_every``) has, between consecutive probe steps, a change of each
probe kind's mean log-probability, and for every (layer, block) the recorder's drift gained and mean update ratio
over the same steps. :func:`intervals` puts them side by side; :func:`within_runs` correlates them within each run
(Spearman over the run's intervals: is the block moving most when the facts fall fastest?), averages each unit's
runs, and tests the units' mean rho against 0 with the unit as the unit (t over units, Holm over the
(layer, block, feature) family). A run whose probe means never change, or with fewer than ``min_intervals``
intervals, has no correlation::

    table = within_runs({"run-a": load_records("runs/a"), ...}, units={"run-a": "w11-s1", ...})
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from layerprobe.analyse.paired import holm

MIN_INTERVALS = 4
FEATURES = {"drift_ratio": "drift_gain", "update_ratio": "update_mean"}


def intervals(
    records: pd.DataFrame, phase: str = "sft", quantity: str = "probe_logprob", kind: str = "cloze_heldout"
) -> pd.DataFrame:
    """One row per (interval between consecutive probe steps, layer, block): ``start``, ``end``, ``probe_change``
    (the kind's mean over the interval), ``drift_gain`` (the block's mean module drift ratio at ``end`` minus at
    ``start``; drift is 0 at step 0) and ``update_mean`` (the block's mean update ratio over steps in the interval)."""
    probes = records[
        (records["phase"] == phase)
        & (records["block"] == "probe")
        & (records["param"] == "")
        & (records["quantity"] == quantity)
        & (records["module"] == kind)
    ]
    if probes.empty:
        raise ValueError(
            f"expected {quantity} rows of {kind!r} probes in phase {phase!r} (train with "
            f"--{phase}.probe_every N), found none"
        )
    means = probes.groupby("step")["value"].mean().sort_index()
    rec = records[
        (records["phase"] == phase)
        & (records["param"] == "")
        & (records["module"] != "")
        & (records["block"] != "probe")
        & records["quantity"].isin(list(FEATURES))
    ]

    def per_block(quantity: str) -> pd.DataFrame:  # (layer, block) x step: the mean over the block's modules
        d = rec[rec["quantity"] == quantity]
        return d.groupby(["layer", "block", "step"])["value"].mean().unstack("step") if len(d) else pd.DataFrame()

    drift, update = per_block("drift_ratio"), per_block("update_ratio")
    if not drift.empty:
        drift[0] = 0.0
    rows = []
    steps = list(means.index)
    for start, end in itertools.pairwise(steps):
        change = float(means[end] - means[start])
        blocks = drift.index if not drift.empty else update.index
        for layer, block in blocks:
            row = {"start": start, "end": end, "layer": layer, "block": block, "probe_change": change}
            if not drift.empty and start in drift and end in drift:
                row["drift_gain"] = float(drift.loc[(layer, block), end] - drift.loc[(layer, block), start])
            if not update.empty:
                cols = [s for s in update.columns if start < s <= end]
                row["update_mean"] = float(update.loc[(layer, block), cols].mean()) if cols else math.nan
            rows.append(row)
    return pd.DataFrame(rows)


def within_runs(
    records: Mapping[str, pd.DataFrame],
    units: Mapping[str, str],
    phase: str = "sft",
    quantity: str = "probe_logprob",
    kind: str = "cloze_heldout",
    min_intervals: int = MIN_INTERVALS,
) -> pd.DataFrame:
    """Per (layer, block, feature): the mean over units of each unit's mean within-run Spearman rho between the
    feature and the probes' change over intervals (negative: the block moves most when the probes fall most), its t
    interval and p over units, Holm over the family, n_runs and n_units."""
    per_run = []
    for run, rec in records.items():
        iv = intervals(rec, phase, quantity, kind)
        for feature in [f for f in FEATURES.values() if f in iv]:
            for (layer, block), g in iv.groupby(["layer", "block"]):
                g = g.dropna(subset=[feature])
                if len(g) < min_intervals or np.ptp(g["probe_change"]) == 0 or np.ptp(g[feature]) == 0:
                    continue
                rho = stats.spearmanr(g[feature], g["probe_change"]).statistic
                per_run.append(
                    {
                        "run": run,
                        "unit": units[run],
                        "layer": layer,
                        "block": block,
                        "feature": feature,
                        "rho": float(rho),
                    }
                )
    if not per_run:
        raise ValueError(
            f"no run has {min_intervals} probe intervals with changing probes and features; probe "
            f"more often (--{phase}.probe_every)"
        )
    # rho itself is averaged, not Fisher's z: over a handful of intervals rho = +-1 is common and its z infinite
    z = pd.DataFrame(per_run)
    unit_z = z.groupby(["layer", "block", "feature", "unit"])["rho"].mean().reset_index()
    rows = []
    for (layer, block, feature), g in unit_z.groupby(["layer", "block", "feature"]):
        n = len(g)
        row = {
            "layer": layer,
            "block": block,
            "feature": feature,
            "n_units": n,
            "n_runs": int(((z["layer"] == layer) & (z["block"] == block) & (z["feature"] == feature)).sum()),
            "rho": float(g["rho"].mean()),
            "lo": math.nan,
            "hi": math.nan,
            "p": math.nan,
        }
        if n > 1 and np.ptp(g["rho"]) > 0:
            t = stats.ttest_1samp(g["rho"], 0.0)
            ci = t.confidence_interval(0.95)
            row.update(lo=float(ci.low), hi=float(ci.high), p=float(t.pvalue))
        rows.append(row)
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy())
    return out.sort_values(["feature", "layer", "block"]).reset_index(drop=True)
