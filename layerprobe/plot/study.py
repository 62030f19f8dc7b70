"""Sweep figures: results of a factorial design as facets, and paired differences from a baseline.

The interval tables come from :mod:`layerprobe.sweep` (``summarize``, ``paired_table``); this module only draws
them. A design's factors are laid out as seaborn does for ``catplot``: the last factor on x, the one before it as
hue, the one before that as columns (study A: CPT alpha columns, SFT alpha hue, target modules on x); several
metrics of one panel (before/after) are rows. Intervals are drawn only where one exists, and the caption says
what they are (method and n).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from layerprobe.plot.style import PHASE_NAMES, label, quantity, save_figure, split_metric, suptitle, theme

POINT = dict(marker="o", ms=5, lw=1.6)


def factor_roles(axes: list[str]) -> dict[str, str]:
    """Which factor goes where: x = the last, hue = the one before, col = the one before that; more factors are
    joined into the rows."""
    roles: dict[str, str] = {}
    for role, name in zip(("x", "hue", "col"), reversed(axes)):
        roles[role] = name
    if len(axes) > 3:
        roles["row"] = " / ".join(axes[:-3])
    return roles


def _interval_words(kinds) -> str:
    """ci.csv's interval kinds ('Wilson (n=48)', 't over 3 cells', 'none') as a caption sentence."""
    words = []
    for kind in sorted(set(kinds)):
        if kind.startswith("Wilson"):
            n = kind[kind.find("n=") + 2 :].rstrip(")")
            words.append(f"Wilson score interval over n = {n} items of one cell")
        elif kind.startswith("t over"):
            words.append(f"Student t interval of the mean over {kind.split()[2]} cells (seeds)")
        elif kind == "none":
            words.append("no interval where a single cell measured a quantity that is not a rate (a point alone)")
        else:
            words.append(kind)
    return "; ".join(words)


def _draw_points(
    data: pd.DataFrame, x: str | None, hue: str | None, order: list, hue_order: list, palette, ax=None, **_
):
    ax = ax or plt.gca()
    hues = hue_order or [None]
    width = 0.7
    for j, h in enumerate(hues):
        part = data if h is None else data[data[hue] == h]
        offset = (j - (len(hues) - 1) / 2) * (width / max(1, len(hues))) if len(hues) > 1 else 0.0
        for _, r in part.iterrows():
            i = order.index(r[x]) if x else 0
            colour = palette[j]
            if np.isfinite(r["lo"]) and np.isfinite(r["hi"]):
                ax.plot(
                    [i + offset, i + offset], [r["lo"], r["hi"]], color=colour, lw=POINT["lw"], solid_capstyle="butt"
                )
            ax.plot([i + offset], [r["mean"]], color=colour, marker=POINT["marker"], ms=POINT["ms"], ls="none")
    ax.set_xticks(range(len(order or [0])))
    ax.set_xticklabels([str(o) for o in order] if order else ["all"])
    ax.set_xlim(-0.6, max(0, len(order) - 1) + 0.6)


def _short_label(metric: str) -> str:
    """A y label short enough for one facet: the model (after CPT / after SFT) or the quantity, and the unit."""
    phase, key = split_metric(metric)
    q = quantity(key)
    text = PHASE_NAMES[phase] if phase and key != "seconds" else key.replace("_", " ")
    return f"{text} ({q.unit})" if q.unit else text


def sweep_panel(stats: pd.DataFrame, axes: list[str], out_png: str | os.PathLike) -> Path:
    """One figure of one panel of ``plot:``: ``stats`` holds ``summarize`` rows of one or more metrics (columns
    ``axes``..., metric, mean, lo, hi, ci, n_cells). Factors become x / hue / columns, metrics rows."""
    theme()
    stats = stats.copy()
    metrics = list(dict.fromkeys(stats["metric"]))
    by = [a for a in axes if a in stats]
    for a in by:
        stats[a] = stats[a].astype(str)
    roles = factor_roles(by)
    extra = by[:-3]
    # rows: each metric of the panel (before / after) x each combination of the factors beyond the third
    stats["_metric"] = stats["metric"]
    stats["_extra"] = stats[extra].agg(" / ".join, axis=1) if extra else ""
    stats["_row"] = stats["_metric"] + "|" + stats["_extra"]
    row_order = [f"{m}|{e}" for m in metrics for e in dict.fromkeys(stats["_extra"])]
    row = "_row" if len(row_order) > 1 else None
    x, hue, col = roles.get("x"), roles.get("hue"), roles.get("col")
    order = list(dict.fromkeys(stats[x])) if x else []
    hue_order = list(dict.fromkeys(stats[hue])) if hue else []
    palette = sns.color_palette("colorblind", max(1, len(hue_order)))
    longest = max((len(o) for o in order), default=3)
    upright = longest > 6 and len(order) > 3  # long labels stand upright (a slanted one's box hits its neighbours)
    width = max(3.2, len(order) * (0.32 if upright else 0.35 + 0.06 * min(longest, 14)) + 0.2 * len(hue_order))
    height = 2.5 + (0.065 * min(longest, 30) if upright else 0.0)
    g = sns.FacetGrid(
        stats,
        row=row,
        col=col,
        row_order=row_order if row else None,
        sharey=True,
        height=height,
        aspect=width / height,
        margin_titles=False,
        despine=False,
    )
    g.map_dataframe(_draw_points, x=x, hue=hue, order=order, hue_order=hue_order, palette=palette)
    g.set_titles(template="")
    keys = [split_metric(m)[1] for m in metrics]
    common = len(set(keys)) == 1
    _label_facets(g, row_order, col, x, extra, upright)  # without a row facet, row_order is one row
    if quantity(keys[0]).unit == "share":  # rates and accuracies on their whole scale
        lo = min(0.0, float(stats[["mean", "lo"]].min().min()))
        hi = max(1.0, float(stats[["mean", "hi"]].max().max()))
        g.set(ylim=(lo - 0.03, hi + 0.03))
    if hue:
        handles = [plt.Line2D([], [], color=c, marker="o", ls="none") for c in palette]
        g.figure.legend(handles, hue_order, title=hue, fontsize=7, title_fontsize=7, frameon=False)
    title = label(keys[0], unit=False) if common else " vs ".join(label(m, unit=False) for m in metrics)
    suptitle(g.figure, title)
    lines = g.figure._suptitle.get_text().count("\n")
    if lines:  # a wrapped title takes room from the axes: give it back
        w, h = g.figure.get_size_inches()
        g.figure.set_size_inches(w, h + 0.3 * lines)
    return save_figure(g.figure, out_png, dpi=130, caption=_panel_caption(stats))


def _label_facets(g, rows: list[str], col: str | None, x: str | None, extra: list[str], upright: bool) -> None:
    """Titles, x labels and y labels of a facet grid; ``rows[r]`` = ``metric|extra factors' values`` of row r."""
    for r, axes_row in enumerate(g.axes):
        metric, ext = rows[r].split("|", 1)
        for c, ax in enumerate(axes_row):
            if col and r == 0:
                ax.set_title(f"{col} = {g.col_names[c]}")
            ax.set_xlabel(x or "" if r == len(g.axes) - 1 else "")
            ylabel = _short_label(metric) if c == 0 else ""
            if ext and c == 0:
                ylabel = f"{' / '.join(extra)} = {ext}\n{ylabel}"
            ax.set_ylabel(ylabel, fontsize=8)
            if upright:
                ax.tick_params(axis="x", rotation=90)


def _panel_caption(stats: pd.DataFrame) -> str:
    """Points and intervals in words, with the number of cells behind each point."""
    n = stats["n_cells"].astype(int)
    cells = "one cell each" if n.max() == 1 else f"{n.min()}{'' if n.min() == n.max() else f'-{n.max()}'} cells each"
    if set(stats["ci"]) == {"none"}:
        return f"Points: value per condition ({cells}). No interval: one cell, and not a rate with a known n."
    return f"Points: mean per condition ({cells}); lines: 95 % interval, {_interval_words(stats['ci'])}."


def paired_panel(paired: pd.DataFrame, out_png: str | os.PathLike, baseline: str = "the baseline") -> Path | None:
    """One panel per metric: each condition minus ``baseline`` on the same seed and grid values, with its 95 %
    paired t interval; the side of 0 that is better is marked. Metrics equal in every pair (those of a shared CPT)
    are left out. Returns None when there is nothing to draw."""
    if paired.empty:
        return None
    moved = paired.groupby("metric", sort=False)["mean_diff"].apply(lambda d: (d != 0).any())
    metrics = [m for m, any_moved in moved.items() if any_moved]
    if not metrics:
        return None
    theme()
    conds = list(dict.fromkeys(paired["condition"]))
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    longest = max(len(c) for c in conds)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.1 * cols + 0.07 * longest + 0.6, (0.26 * len(conds) + 1.5) * rows),
        sharey=True,
        squeeze=False,
    )
    for ax in axes.flat[len(metrics) :]:
        fig.delaxes(ax)
    good, bad = sns.color_palette("vlag", 7)[0], sns.color_palette("vlag", 7)[-1]
    for ax, m in zip(axes.flat, metrics):
        d = paired[paired["metric"] == m].set_index("condition").reindex(conds)
        better = quantity(split_metric(m)[1]).better or "higher"
        y = np.arange(len(conds))
        for yi, (_, r) in zip(y, d.iterrows()):
            if not np.isfinite(r["mean_diff"]):
                continue
            colour = "grey" if r["mean_diff"] == 0 else good if (r["mean_diff"] > 0) == (better == "higher") else bad
            if np.isfinite(r["lo"]) and np.isfinite(r["hi"]):
                ax.plot([r["lo"], r["hi"]], [yi, yi], color=colour, lw=1.6, solid_capstyle="butt")
            ax.plot([r["mean_diff"]], [yi], "o", color=colour, ms=5)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, conds, fontsize=7)
        ax.set_title(label(m, unit=False), fontsize=8)
        unit = quantity(split_metric(m)[1]).unit
        ax.set_xlabel(
            f"condition - {baseline}{f' ({unit})' if unit else ''}\n"
            f"{'better ->' if better == 'higher' else '<- better'}",
            fontsize=7,
        )
        lo, hi = ax.get_xlim()
        span = max(abs(lo), abs(hi))
        ax.set_xlim(-span, span)  # 0 in the middle: which side a condition falls on reads at a glance
    axes.flat[0].invert_yaxis()  # the axes share y: the conditions read top-down in sweep order
    n = paired["n_pairs"].astype(int)
    suptitle(fig, f"Paired differences from {baseline}")
    caption = (
        f"Each condition minus {baseline} on the same seed (and grid values), n = {n.min()}"
        f"{'' if n.min() == n.max() else f'-{n.max()}'} pairs; points: mean difference, lines: 95 % "
        "paired Student t interval (no line: one pair). Blue: the better side, red: the worse side."
    )
    return save_figure(fig, out_png, dpi=130, caption=caption)


def curve_panel(table: pd.DataFrame, x: str, metrics: list[str], out_png: str | os.PathLike, caption: str = "") -> Path:
    """Metrics (columns of ``table``, same unit) against ``x`` (e.g. training steps): one line each."""
    theme()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for m in metrics:
        ax.plot(table[x], table[m], marker="o", label=label(m, unit=False))
    ax.set_xlabel(label(x))
    ax.set_ylabel(quantity(metrics[0]).unit)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out_png, caption=caption)


def claims_panel(claims: pd.DataFrame, out_png: str | os.PathLike) -> Path | None:
    """A forest plot of a family of claims (:func:`layerprobe.analyse.paired.compare_family`): one panel per metric,
    each claim's difference (arm a - arm b, mean over units) with its 95 % t interval over units and its equivalence
    margin; filled = differs, square = equivalent, hollow = inconclusive. Claims not yet tested are left out.
    Returns None when nothing is tested."""
    tested = claims[claims["missing"].fillna("") == ""] if "missing" in claims else claims
    if tested.empty:
        return None
    theme()
    metrics = list(dict.fromkeys(tested["metric"]))
    heights = [len(tested[tested["metric"] == m]) for m in metrics]
    longest = max(len(c) for c in tested["claim"])
    size = (4.2 + 0.065 * longest, 0.3 * sum(heights) + 1.2 * len(metrics) + 1.0)
    fig, axes = plt.subplots(len(metrics), 1, figsize=size, gridspec_kw={"height_ratios": heights}, squeeze=False)
    marks = {
        "differs": ("o", "black", "black"),
        "equivalent": ("s", "tab:blue", "tab:blue"),
        "inconclusive": ("o", "white", "grey"),
    }
    for ax, m in zip(axes[:, 0], metrics):
        d = tested[tested["metric"] == m]
        y = np.arange(len(d))
        for yi, (_, r) in zip(y, d.iterrows()):
            shape, face, edge = marks[r["verdict"]]
            if np.isfinite(r["lo"]):
                ax.plot([r["lo"], r["hi"]], [yi, yi], color=edge, lw=1.5, solid_capstyle="butt")
            ax.plot([r["diff"]], [yi], shape, ms=5, color=face, markeredgecolor=edge)
        margin = d["margin"].dropna()
        if len(margin):
            for x in (-margin.iloc[0], margin.iloc[0]):
                ax.axvline(x, color="tab:blue", lw=0.6, ls=":")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, d["claim"], fontsize=7)
        ax.invert_yaxis()
        unit = quantity(m).unit
        ax.set_xlabel(f"arm a - arm b: {label(m, unit=False)}{f' ({unit})' if unit else ''}", fontsize=7)
    n = tested["n_units"].astype(int)
    suptitle(fig, "Claims, with the seed as the unit")
    caption = (
        f"Each claim's difference over {n.min()}{'' if n.min() == n.max() else f'-{n.max()}'} units "
        "(training seeds; worlds too where they vary): point = mean of the per-unit differences, line = 95 % "
        "t interval over units, dotted = the equivalence margin. Filled = differs (paired t, Holm within the "
        "claim's family, p < 0.05); square = equivalent (TOST within the margin, Holm); hollow = "
        "inconclusive."
    )
    return save_figure(fig, out_png, dpi=130, caption=caption)


def null_panel(table: pd.DataFrame, out_png: str | os.PathLike) -> Path:
    """cos(dCPT, dSFT) per layer against its nulls (experiments/study_a/nulls.py's table): one column per block;
    top: each seed's reference SFT (solid) and the same CPT's SFT with another seed (dashed), the grey band is
    +-1.96 sd of a norm-matched random update; bottom: cos between the two SFT updates of one CPT."""
    theme()
    d = table[table["layer"] >= 0]
    blocks = [b for b in ("attn", "mlp") if b in set(d["block"])] or sorted(set(d["block"]))
    fig, axes = plt.subplots(2, len(blocks), figsize=(4.2 * len(blocks), 5.2), sharex=True, squeeze=False)
    seeds = sorted(d["seed"].unique())
    colours = dict(zip(seeds, sns.color_palette("deep", len(seeds))))
    for col, block in enumerate(blocks):
        b = d[d["block"] == block].sort_values("layer")
        top, bottom = axes[0, col], axes[1, col]
        band = b.groupby("layer")["null_sd_cos"].mean() * 1.96
        top.fill_between(band.index, -band, band, color="0.85", lw=0, label="random update, 95 %")
        for s in seeds:
            r = b[b["seed"] == s]
            top.plot(r["layer"], r["cos_cpt_sft"], color=colours[s], lw=1.2, label=f"seed {s}")
            top.plot(r["layer"], r["cos_cpt_sft_reseed"], color=colours[s], lw=1.0, ls="--")
            bottom.plot(r["layer"], r["cos_sft_sft"], color=colours[s], lw=1.2)
        top.axhline(0, color="black", lw=0.6)
        top.set_title(block, fontsize=9)
        top.set_ylabel("cos(dCPT, dSFT)" if col == 0 else "", fontsize=8)
        bottom.set_ylabel("cos(dSFT, dSFT') of one CPT" if col == 0 else "", fontsize=8)
        bottom.set_xlabel("layer", fontsize=8)
        bottom.set_ylim(-0.05, 1.0)
    axes[0, 0].legend(fontsize=7, frameon=False)
    suptitle(fig, "Is SFT's change aligned with CPT's? Against two nulls")
    caption = (
        "Top: cos(dCPT, dSFT) per layer and block, three-way diff base -> CPT -> SFT; solid: the reference "
        "cell, dashed: the same CPT with another SFT seed; grey: +-1.96 sd of a random SFT update of the same "
        "norm per tensor (the diff's null_sd_cos). Bottom: cos between the two SFT updates of the same CPT."
    )
    return save_figure(fig, out_png, dpi=130, caption=caption)
