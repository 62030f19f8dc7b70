"""Layer-wise effects: causal attribution (revert / apply the SFT change per group) and relate's correlations.

Attribution records come from :mod:`layerprobe.attribute` (read through its ``effects``), correlation tables from
:mod:`layerprobe.relate`. Signed effects and correlations use the diverging map centred at 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from layerprobe.plot.style import DIVERGING, MISSING, colour_scale, label, quantity, save_figure, suptitle, theme

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

# what each mode compares (attribution's "base" is the CPT model the SFT started from, "tuned" the SFT model)
MODE_TEXT = {"revert": ("G reverted to the CPT weights", "SFT model"),
             "apply": ("SFT change applied on G only", "CPT model")}


def attribution_figures(records: pd.DataFrame, out_dir: str | os.PathLike,
                        metrics: Sequence[str] | None = None) -> list[Path]:
    """Per metric: bars of the effect per layer (left) and per other group (right), revert on top, apply below;
    a dashed line marks the whole SFT change. With ``cells`` groups, also a layer x block heatmap of the revert
    effect per metric."""
    from layerprobe.attribute import MODES, effects
    from layerprobe.names import BLOCKS

    theme()
    e = effects(records)
    metrics = list(metrics) if metrics else list(dict.fromkeys(e["metric"]))
    out = Path(out_dir)
    paths = []
    blue, red = sns.color_palette(DIVERGING, 7)[0], sns.color_palette(DIVERGING, 7)[-1]
    for metric in metrics:
        m = e[e["metric"] == metric]
        if m.empty:
            raise ValueError(f"no attribution rows for metric {metric!r}; the records have "
                             f"{sorted(e['metric'].unique())}")
        unit = quantity(metric).unit
        is_layer = (m["layer"] >= 0) & (m["block"] == "")
        is_cell = (m["layer"] >= 0) & (m["block"] != "")
        modes = [mode for mode in MODES if (m["mode"] == mode).any()]
        parts = {mode: [p for p in (m[is_layer & (m["mode"] == mode)].sort_values("layer"),
                                    m[~is_layer & ~is_cell & (m["mode"] == mode)]) if not p.empty]
                 for mode in modes}
        ncols = max(len(p) for p in parts.values())
        if ncols:  # with cells groups alone, the heatmap below is the only figure
            fig, axes = plt.subplots(len(modes), ncols, figsize=(5.2 * ncols + 1.0, 2.9 * len(modes) + 0.9),
                                     squeeze=False, gridspec_kw={"width_ratios": [2, 1][:ncols]})
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
            caption = ("revert G: the SFT model with group G set back to the CPT weights, minus the SFT model; apply G: "
                       "the CPT model with only G's SFT change, minus the CPT model. One evaluation each, no interval.")
            paths.append(save_figure(fig, out / f"attribute_{metric}.png", caption=caption))
        cells = m[is_cell & (m["mode"] == "revert")]
        if not cells.empty:
            grid = cells.pivot_table(index="layer", columns="block", values="effect", aggfunc="first")
            grid = grid[[b for b in BLOCKS if b in grid.columns]].sort_index(ascending=False)
            fig, ax = plt.subplots(figsize=(2.6 + 1.1 * grid.shape[1], 2.0 + 0.34 * len(grid)))
            ax.set_facecolor(MISSING)
            sns.heatmap(grid, ax=ax, **colour_scale(metric, grid.to_numpy(), center=0.0), annot=grid.size <= 150,
                        fmt=".2g", annot_kws={"fontsize": 7},
                        cbar_kws={"label": f"revert: {metric} - SFT model{f' ({unit})' if unit else ''}"})
            ax.tick_params(axis="y", rotation=0)
            ax.set_title(f"Revert one block of one layer: change of {metric}", fontsize=9)
            paths.append(save_figure(fig, out / f"attribute_cells_{metric}.png",
                                     caption="Grey: block not evaluated."))
    return paths


def heatmap_rho(table: pd.DataFrame, feature: str, phase: str, outcome: str, out_png: str | os.PathLike,
                alpha: float = 0.05) -> Path:
    """Layer x block heatmap of Spearman's rho for one (feature, phase, outcome); '*' marks q < alpha. Layer -1
    (row ``outside``) = weights outside the decoder stack (embeddings, final norm, head)."""
    from layerprobe.plot.heatmaps import BLOCK_ORDER

    theme()
    d = table[(table["feature"] == feature) & (table["phase"] == phase) & (table["outcome"] == outcome)]
    if d.empty:
        raise ValueError(f"no rows for feature {feature!r}, phase {phase!r}, outcome {outcome!r} in the table")
    rho = d.pivot_table(index="layer", columns="block", values="rho", aggfunc="first", dropna=False)
    q = d.pivot_table(index="layer", columns="block", values="q", aggfunc="first", dropna=False)
    cols = [b for b in BLOCK_ORDER if b in rho.columns] + [b for b in rho.columns if b not in BLOCK_ORDER]
    rho, q = rho[cols].sort_index(ascending=False), q[cols].sort_index(ascending=False)
    labels = rho.map(lambda v: "" if not np.isfinite(v) else f"{v:.2f}") + q.map(
        lambda v: "*" if np.isfinite(v) and v < alpha else "")
    rho.index = ["outside" if i < 0 else str(i) for i in rho.index]
    fig, ax = plt.subplots(figsize=(2.6 + 1.1 * len(cols), 2.0 + 0.34 * len(rho)))
    ax.set_facecolor(MISSING)
    sns.heatmap(rho, ax=ax, cmap=DIVERGING, center=0, vmin=-1, vmax=1, annot=labels.to_numpy(), fmt="",
                annot_kws={"fontsize": 7}, cbar_kws={"label": label("rho", short=True)}, yticklabels=True)
    ax.tick_params(axis="y", rotation=0)
    n = int(d["n_runs"].max())
    ax.set_title(f"{feature} ({phase}) vs {outcome}", fontsize=9)
    ax.set_xlabel("block")
    ax.set_ylabel("layer")
    return save_figure(fig, out_png, caption=f"Spearman rho over {n} runs; * q < {alpha} (Benjamini-Hochberg); "
                                             "grey: undefined (a feature or outcome constant over the runs).")
