"""What :mod:`layerprobe.attribution.attribute` writes as records, and the table of effects read back from them.

Attribution records are rows of the phase ``attribute``: ``base:<metric>`` and ``tuned:<metric>`` (the whole model
before and after SFT), ``revert:<metric>`` / ``apply:<metric>`` per group (its ``param``), the group's ``rel_change``
and, when recorded, its denominators (:data:`DENOMINATORS`). :func:`effects` turns them into one row per group x mode
x metric; :func:`over_seeds` and :func:`paired_difference` summarise them over seeds. Analysis
(:mod:`layerprobe.attribution.attribute`) and figures (:mod:`layerprobe.plot.effects`) both read them through this
module, so neither imports the other."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from layerprobe.core.stats import t_mean_ci

PHASE = "attribute"
MODES = ("revert", "apply")
# each denominator recorded per group -> the ratio effects() writes (the effect's share / the group's share)
DENOMINATORS = {
    "weight_share": "share_per_weight",
    "trained_share": "share_per_trained",
    "delta_share": "share_per_delta",
}
# the per-seed columns over_seeds() gives a mean and an interval ("effect" keeps the names lo / hi)
SEED_VALUES = ("effect", "share", *DENOMINATORS.values())


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


def paired_difference(per_seed: pd.DataFrame, a: str = "attn", b: str = "mlp") -> pd.DataFrame:
    """Per-seed rows of the group ``"a - b"``: for each seed (and cell, mode, metric) the effect, share, ratios and
    denominators of group ``a`` minus those of group ``b``, paired by seed; ``sft_effect`` stays the seed's own.
    ``per_seed``: :func:`effects` rows with a ``seed`` column (and optionally ``cell``)."""
    keys = [c for c in ("cell", "seed", "mode", "metric") if c in per_seed.columns]
    if "seed" not in keys:
        raise ValueError(f"paired_difference needs a 'seed' column; got columns {list(per_seed.columns)}")
    values = [c for c in ("effect", "share", *DENOMINATORS, *DENOMINATORS.values()) if c in per_seed.columns]
    left = per_seed[per_seed["group"] == a].set_index(keys)
    right = per_seed[per_seed["group"] == b].set_index(keys)
    if left.empty or right.empty:
        raise ValueError(
            f"paired_difference needs rows of both groups {a!r} and {b!r}; got groups "
            f"{sorted(per_seed['group'].unique())}"
        )
    both = left.index.intersection(right.index)
    if len(both) != len(left) or len(both) != len(right):
        raise ValueError(
            f"groups {a!r} and {b!r} are not paired: {len(left)} and {len(right)} rows, {len(both)} "
            f"with the same {', '.join(keys)}; attribute both groups in every seed"
        )
    out = left.loc[both, values] - right.loc[both, values]
    out["sft_effect"] = left.loc[both, "sft_effect"]
    out = out.reset_index().assign(group=f"{a} - {b}", layer=-1, block="")
    return out[[c for c in per_seed.columns if c in out.columns]]


def over_seeds(per_seed: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean over seeds with a Student-t interval (:func:`layerprobe.core.stats.t_mean_ci`) per cell x group x mode x
    metric of per-seed :func:`effects` rows (a ``seed`` column; rows of :func:`paired_difference` welcome).

    Columns: ``n_seeds``; ``effect`` with ``lo`` / ``hi``; ``share`` and each ratio (``share_per_weight``, ...)
    with ``<name>_lo`` / ``<name>_hi`` -- each ratio is computed per seed, then averaged; ``sft_effect`` and the
    denominators (``weight_share``, ...) as means. One seed, or a value that is NaN or infinite in some seed: the
    interval is NaN (and the mean too, in the second case); the per-seed rows show why."""

    if "seed" not in per_seed.columns:
        raise ValueError(f"over_seeds needs a 'seed' column (one row per seed); got columns {list(per_seed.columns)}")
    keys = [c for c in ("cell", "group", "mode", "metric") if c in per_seed.columns]
    twice = per_seed.duplicated([*keys, "seed"])
    if twice.any():
        raise ValueError(
            f"over_seeds got {int(twice.sum())} rows twice for the same seed (first: "
            f"{per_seed.loc[twice, [*keys, 'seed']].iloc[0].to_dict()}); pass each seed's rows once"
        )
    rows = []
    for key, d in per_seed.groupby(keys, sort=False):
        row = dict(zip(keys, key), n_seeds=len(d))
        for col in [c for c in SEED_VALUES if c in d.columns]:
            x = d[col].to_numpy(dtype=float)
            finite = bool(np.isfinite(x).all())
            lo, hi = t_mean_ci(x, level) if finite else (math.nan, math.nan)
            names = ("lo", "hi") if col == "effect" else (f"{col}_lo", f"{col}_hi")
            row.update({col: float(x.mean()) if finite else math.nan, names[0]: lo, names[1]: hi})
        for col in [c for c in ("sft_effect", *DENOMINATORS) if c in d.columns]:
            row[col] = float(d[col].mean())
        rows.append(row)
    return pd.DataFrame(rows)
