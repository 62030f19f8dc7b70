"""Layer-wise effects: causal attribution (revert / apply the SFT change per group) and relate's correlations.

Attribution records come from :mod:`layerprobe.attribution.attribute` (read through its ``effects``), correlation tables
from :mod:`layerprobe.analyse.relate`. Signed effects and correlations use the diverging map centred at 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from layerprobe.core.names import BLOCKS
from layerprobe.plot.style import (
    BLOCK_ORDER,
    DIVERGING,
    MISSING,
    colour_scale,
    label,
    quantity,
    save_figure,
    suptitle,
    theme,
)
from layerprobe.record.attribution_records import MODES, effects

# what each mode compares (attribution's "base" is the CPT model the SFT started from, "tuned" the SFT model)
MODE_TEXT = {
    "revert": ("G reverted to the CPT weights", "SFT model"),
    "apply": ("SFT change applied on G only", "CPT model"),
}


def attribution_figures(
    records: pd.DataFrame, out_dir: str | os.PathLike, metrics: Sequence[str] | None = None
) -> list[Path]:
    """Per metric: bars of the effect per layer (left) and per other group (right), revert on top, apply below;
    a dashed line marks the whole SFT change. With ``cells`` groups, also a layer x block heatmap of the revert
    effect per metric."""

    theme()
    e = effects(records)
    metrics = list(metrics) if metrics else list(dict.fromkeys(e["metric"]))
    out = Path(out_dir)
    paths = []
    for metric in metrics:
        m = e[e["metric"] == metric]
        if m.empty:
            raise ValueError(
                f"no attribution rows for metric {metric!r}; the records have {sorted(e['metric'].unique())}"
            )
        is_layer = (m["layer"] >= 0) & (m["block"] == "")
        is_cell = (m["layer"] >= 0) & (m["block"] != "")
        modes = [mode for mode in MODES if (m["mode"] == mode).any()]
        parts = {
            mode: [
                p
                for p in (
                    m[is_layer & (m["mode"] == mode)].sort_values("layer"),
                    m[~is_layer & ~is_cell & (m["mode"] == mode)],
                )
                if not p.empty
            ]
            for mode in modes
        }
        if max(len(p) for p in parts.values()):  # with cells groups alone, the heatmap below is the only figure
            paths.append(_bars_figure(m, metric, parts, out))
        cells = m[is_cell & (m["mode"] == "revert")]
        if not cells.empty:
            paths.append(_cells_heatmap(cells, metric, out))
    return paths


def _bars_figure(m: pd.DataFrame, metric: str, parts: dict[str, list[pd.DataFrame]], out: Path) -> Path:
    """One row of bar panels per mode: the effect per layer, then per other group (``parts[mode]``)."""
    unit = quantity(metric).unit
    modes = list(parts)
    ncols = max(len(p) for p in parts.values())
    blue, red = sns.color_palette(DIVERGING, 7)[0], sns.color_palette(DIVERGING, 7)[-1]
    fig, axes = plt.subplots(
        len(modes),
        ncols,
        figsize=(5.2 * ncols + 1.0, 2.9 * len(modes) + 0.9),
        squeeze=False,
        gridspec_kw={"width_ratios": [2, 1][:ncols]},
    )
    for row, mode in enumerate(modes):
        full = m["sft_effect"].iloc[0] * (-1 if mode == "revert" else 1)
        variant, reference = MODE_TEXT[mode]
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(parts[mode]):
                fig.delaxes(ax)
                continue
            part = parts[mode][col]
            by_layer = bool((part["block"] == "").all() and (part["layer"] >= 0).all())
            labels = part["layer"].astype(str) if by_layer else part["group"]
            ax.bar(range(len(part)), part["effect"], color=[blue if v >= 0 else red for v in part["effect"]])
            flat = by_layer or (len(part) < 4 and max(len(str(v)) for v in labels) < 10)
            ax.set_xticks(range(len(part)), labels, rotation=0 if flat else 90, fontsize=7)
            ax.axhline(0, color="black", lw=0.6)
            ax.axhline(full, color="gray", ls="--", lw=0.8, label=f"whole SFT change ({full:+.3g})")
            ax.set_xlabel("layer G" if by_layer else "group G")
            ax.set_title(f"{mode}: {variant}", fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{metric}: {mode} G - {reference}{f' ({unit})' if unit else ''}", fontsize=7)
                ax.legend(fontsize=7, loc="best")
    suptitle(fig, f"Which layers carry the SFT change of {label(metric, unit=False)}")
    caption = (
        "revert G: the SFT model with group G set back to the CPT weights, minus the SFT model; apply G: "
        "the CPT model with only G's SFT change, minus the CPT model. One evaluation each, no interval."
    )
    return save_figure(fig, out / f"attribute_{metric}.png", caption=caption)


def _cells_heatmap(cells: pd.DataFrame, metric: str, out: Path) -> Path:
    """Layer x block heatmap of the revert effect of each (layer, block) cell."""
    unit = quantity(metric).unit
    grid = cells.pivot_table(index="layer", columns="block", values="effect", aggfunc="first")
    grid = grid[[b for b in BLOCKS if b in grid.columns]].sort_index(ascending=False)
    fig, ax = plt.subplots(figsize=(2.6 + 1.1 * grid.shape[1], 2.0 + 0.34 * len(grid)))
    ax.set_facecolor(MISSING)
    sns.heatmap(
        grid,
        ax=ax,
        **colour_scale(metric, grid.to_numpy(), center=0.0),
        annot=grid.size <= 150,
        fmt=".2g",
        annot_kws={"fontsize": 7},
        cbar_kws={"label": f"revert: {metric} - SFT model{f' ({unit})' if unit else ''}"},
    )
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(f"Revert one block of one layer: change of {metric}", fontsize=9)
    return save_figure(fig, out / f"attribute_cells_{metric}.png", caption="Grey: block not evaluated.")


_RHO_VALUES = {
    "rho": "rho",
    "partial_rho": "partial rho given the total SFT drift",
    "rho_tested": "rho as tested",
    "partial_rho_tested": "partial rho given the total SFT drift, as tested",
}


def heatmap_rho(
    table: pd.DataFrame,
    feature: str,
    phase: str,
    outcome: str,
    out_png: str | os.PathLike,
    alpha: float = 0.05,
    value: str = "rho",
) -> Path:
    """Layer x block heatmap of Spearman's rho (``value="partial_rho"``: the partial rho given the total SFT drift;
    ``rho_tested`` / ``partial_rho_tested``: the statistic each p tests, see :mod:`layerprobe.analyse.relate`) for
    one (feature, phase, outcome), one panel per stratum of the table (``all``, ``method=lora``, ...); '*' marks
    q < alpha (``q`` / ``partial_q``, Benjamini-Hochberg within the stratum). Layer -1 (row ``outside``) = weights
    outside the decoder stack (embeddings, final norm, head)."""

    theme()
    if value not in _RHO_VALUES:
        raise ValueError(f"value must be one of {', '.join(_RHO_VALUES)}, got {value!r}")
    q_col = "partial_q" if value.startswith("partial") else "q"
    d = table[(table["feature"] == feature) & (table["phase"] == phase) & (table["outcome"] == outcome)]
    if d.empty:
        raise ValueError(f"no rows for feature {feature!r}, phase {phase!r}, outcome {outcome!r} in the table")
    if value not in d or q_col not in d:
        raise ValueError(
            f"the table has no {value!r} / {q_col!r} columns; got {list(d.columns)} (an older relate.csv "
            "has rho and q only: draw value='rho')"
        )
    if "stratum" not in d:
        d = d.assign(stratum="all")
    strata = list(dict.fromkeys(d["stratum"]))
    cols = [b for b in BLOCK_ORDER if b in set(d["block"])] + sorted(set(d["block"]) - set(BLOCK_ORDER))
    layers = sorted(set(d["layer"]), reverse=True)
    fig, axes = plt.subplots(
        1, len(strata), figsize=(1.2 + (1.4 + 0.9 * len(cols)) * len(strata), 2.0 + 0.34 * len(layers)), squeeze=False
    )
    for i, (stratum, ax) in enumerate(zip(strata, axes[0])):
        _rho_panel(ax, d[d["stratum"] == stratum], stratum, layers, cols, value, alpha, i == 0, i == len(strata) - 1)
    what = _RHO_VALUES[value]
    suptitle(fig, f"{feature} ({phase}) vs {outcome}: {what}", size=9)
    tested = (
        " (where p permutes within CPT groups: ranks centred in each group, the relation among runs of one CPT; "
        "where it permutes whole groups: over the groups' means)"
        if value.endswith("tested")
        else ""
    )
    caption = (
        f"Spearman {what} per stratum of runs{tested}; * q < {alpha} (Benjamini-Hochberg within the stratum, "
        "permutation p respecting shared CPTs); grey: undefined (constant over the runs, or frozen in all)."
    )
    return save_figure(fig, out_png, caption=caption)


def _rho_panel(
    ax, s: pd.DataFrame, stratum: str, layers: list, cols: list, value: str, alpha: float, first: bool, last: bool
) -> None:
    """One stratum's layer x block heatmap of ``value``, '*' where its q < alpha; the colour bar on the ``last``."""
    q_col = "partial_q" if value.startswith("partial") else "q"
    grid = s.pivot_table(index="layer", columns="block", values=value, aggfunc="first", dropna=False)
    q = s.pivot_table(index="layer", columns="block", values=q_col, aggfunc="first", dropna=False)
    grid, q = grid.reindex(index=layers, columns=cols), q.reindex(index=layers, columns=cols)
    labels = grid.map(lambda v: "" if not np.isfinite(v) else f"{v:.2f}") + q.map(
        lambda v: "*" if np.isfinite(v) and v < alpha else ""
    )
    grid.index = ["outside" if l < 0 else str(l) for l in grid.index]
    ax.set_facecolor(MISSING)
    sns.heatmap(
        grid,
        ax=ax,
        cmap=DIVERGING,
        center=0,
        vmin=-1,
        vmax=1,
        annot=labels.to_numpy(),
        fmt="",
        annot_kws={"fontsize": 7},
        cbar=last,
        yticklabels=first,
        cbar_kws={"label": "partial rho" if value.startswith("partial") else label("rho", short=True)},
    )
    ax.tick_params(axis="y", rotation=0)
    n, groups = int(s["n_runs"].max()), int(s["n_groups"].max()) if "n_groups" in s else 0
    ax.set_title(f"{stratum}\n{n} runs" + (f", {groups} CPTs" if groups else ""), fontsize=8)
    ax.set_xlabel("block")
    ax.set_ylabel("layer" if first else "")
