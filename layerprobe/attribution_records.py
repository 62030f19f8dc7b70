"""What :mod:`layerprobe.attribute` writes as records, and the table of effects read back from them.

Attribution records are rows of the phase ``attribute``: ``base:<metric>`` and ``tuned:<metric>`` (the whole
model before and after SFT), ``revert:<metric>`` / ``apply:<metric>`` per group (its ``param``), the group's
``rel_change`` and, when recorded, its denominators (:data:`DENOMINATORS`). :func:`effects` turns them into one
row per group x mode x metric. Analysis (:mod:`layerprobe.attribute`) and figures (:mod:`layerprobe.plot.effects`)
both read them through this module, so neither imports the other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PHASE = "attribute"
MODES = ("revert", "apply")
# each denominator recorded per group -> the ratio effects() writes (the effect's share / the group's share)
DENOMINATORS = {
    "weight_share": "share_per_weight",
    "trained_share": "share_per_trained",
    "delta_share": "share_per_delta",
}


def effects(records: pd.DataFrame) -> pd.DataFrame:
    """One row per group x mode x metric: value, effect (revert: value - tuned; apply: value - base), the full SFT
    effect (tuned - base) and share = effect / (base - tuned) for revert, effect / (tuned - base) for apply:
    1 means this group alone carries the whole change of the metric."""
    d = records[records["phase"] == PHASE]
    split = d["quantity"].str.split(":", n=1, expand=True)
    d = d.assign(mode=split[0], metric=split[1])
    base = d[(d["mode"] == "base") & (d["param"] == "")].set_index("metric")["value"]
    tuned = d[(d["mode"] == "tuned") & (d["param"] == "")].set_index("metric")["value"]
    rel = d[d["quantity"] == "rel_change"].set_index("param")["value"]
    out = d[d["mode"].isin(MODES)][["param", "layer", "block", "mode", "metric", "value"]].copy()
    out = out.rename(columns={"param": "group"})
    out["sft_effect"] = out["metric"].map(tuned - base).to_numpy()
    ref = np.where(out["mode"] == "revert", out["metric"].map(tuned), out["metric"].map(base))
    out["effect"] = out["value"] - ref
    full = np.where(out["mode"] == "revert", -out["sft_effect"], out["sft_effect"])
    with np.errstate(divide="ignore", invalid="ignore"):
        out["share"] = np.where(full != 0, out["effect"] / full, np.nan) + 0.0  # no -0
    out["rel_change"] = out["group"].map(rel).to_numpy()
    present = set(d["quantity"])
    for denominator, ratio in DENOMINATORS.items():  # records written before a denominator existed lack it
        if denominator in present:
            ws = d[d["quantity"] == denominator].set_index("param")["value"]
            out[denominator] = out["group"].map(ws).to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                out[ratio] = out["share"] / out[denominator]
    return out.reset_index(drop=True)
