"""What an unrelated update gives for the three-way diff's alignment quantities ``cos_cpt_sft`` and ``undo_frac``.

The diff (:mod:`layerprobe.diff`, checkpoints base A, CPT B, SFT C) measures per group G of tensors
cos(X, E) and undo_frac = -<X, E> / |X|^2 with X = B - A (the CPT change) and E = C - B (the SFT change). A value
near 0 only means something against what an update unrelated to X gives. Null: each tensor's SFT change e_i is
replaced by a direction drawn uniformly on the sphere of R^{d_i} with the same norm |e_i|. For a fixed x and u
uniform on the unit sphere of R^d, <x, u> / |x| has mean 0 and variance 1/d, so over G

    sd(cos_G)       = sqrt(sum_i |e_i|^2 |x_i|^2 / d_i) / (|X_G| |E_G|)
    sd(undo_frac_G) = sd(cos_G) * |E_G| / |X_G|

with both means 0 (|E_G| is the same for the null update). The other null, two SFT runs from one CPT with
different seeds, needs no formula: diff both runs against the same CPT (and each other) and compare.
"""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd


def random_update_null(diff: pd.DataFrame, numel: Mapping[str, int]) -> pd.DataFrame:
    """The random-update null per (layer, block) and for the whole model (layer -1, block "").

    ``diff``: a three-way diff's records (per-tensor rows: ``param`` set, quantities ``delta_norm`` = |x_i| and
    ``delta_norm_bc`` = |e_i|); ``numel``: each tensor's number of entries. Returns columns layer, block,
    n_tensors, sd_cos, sd_undo_frac; tensors the SFT left unchanged count in |X_G| only.
    """
    per = diff[(diff["param"] != "") & diff["quantity"].isin(["delta_norm", "delta_norm_bc"])]
    if per.empty:
        raise ValueError("random_update_null needs a three-way diff's per-tensor rows (delta_norm, delta_norm_bc); "
                         "run layerprobe diff BASE CPT SFT")
    wide = per.pivot_table(index=["param", "layer", "block"], columns="quantity", values="value").reset_index()
    missing = sorted(set(wide["param"]) - set(numel))
    if missing:
        raise ValueError(f"numel has no entry for {len(missing)} tensors of the diff, e.g. {missing[0]!r}")
    wide["d"] = wide["param"].map(numel).astype(float)
    wide["x2"], wide["e2"] = wide["delta_norm"] ** 2, wide["delta_norm_bc"] ** 2
    wide["v"] = wide["x2"] * wide["e2"] / wide["d"]

    def summarise(g: pd.DataFrame) -> pd.Series:
        x, e = math.sqrt(g["x2"].sum()), math.sqrt(g["e2"].sum())
        sd = math.sqrt(g["v"].sum()) / (x * e) if x > 0 and e > 0 else math.nan
        return pd.Series({"n_tensors": len(g), "sd_cos": sd, "sd_undo_frac": sd * e / x if x > 0 else math.nan})

    parts = [wide.groupby(["layer", "block"]).apply(summarise, include_groups=False).reset_index()]
    whole = summarise(wide)
    parts.append(pd.DataFrame([{"layer": -1, "block": "", **whole.to_dict()}]))
    out = pd.concat(parts, ignore_index=True)
    out["n_tensors"] = out["n_tensors"].astype(int)
    return out


def group_value(diff: pd.DataFrame, quantity: str, layer: int = -1, block: str = "") -> float:
    """One aggregate of a diff's records: ``quantity`` of (layer, block) over all its modules (-1, "" = the whole
    model)."""
    rows = diff[(diff["param"] == "") & (diff["module"] == "") & (diff["layer"] == layer) & (diff["block"] == block)
                & (diff["quantity"] == quantity)]
    if len(rows) != 1:
        raise ValueError(f"expected one {quantity} row for layer {layer}, block {block!r}; found {len(rows)}")
    return float(rows["value"].iloc[0])

