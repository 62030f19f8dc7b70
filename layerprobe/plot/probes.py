"""Probes over training steps under the per-layer drift: when the facts went, and where the weights moved then.

Reads the probe rows a ``ProbeCallback`` wrote into the records (``block`` ``probe``, ``module`` the probe kind,
``param`` "" for the mean over a kind: ``probe_logprob``, ``probe_top1``, ``style_logodds``) and the recorder's
aggregated rows of one heatmap quantity (``drift_ratio``, else ``update_ratio``), and draws them on one step axis.
This module never imports torch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from layerprobe.plot.style import BLOCK_ORDER, MISSING, PHASE_TITLES, colour_scale, label, save_figure, suptitle, theme
from layerprobe.record.records import load_records

PROBE_BLOCK = "probe"  # the block of every probe row (layerprobe.train.probes.BLOCK)
FIGURE = "probes_over_steps"  # the figure's name after its phase: <phase>_probes_over_steps.png
HEAT_QUANTITIES = ("drift_ratio", "update_ratio")  # the heatmap on top: the first the phase recorded
KINDS = {"cloze": "cloze", "cloze_heldout": "held-out cloze", "qa": "QA", "instruction": "instructions (style)"}
CURVES = (  # (quantity, panel title, short y label)
    ("probe_logprob", "mean log p(gold answer | prompt) (nats)", "log p"),
    ("probe_top1", "share of probes whose every gold token is the top choice", "top-1 share"),
    ("style_logodds", "style log-odds: log p(styled answer) - log p(plain answer) (nats)", "log-odds"),
)


def probe_means(df: pd.DataFrame, phase: str | None = None) -> pd.DataFrame:
    """The mean rows of the probes (one per step, kind and quantity) of ``phase`` (all phases: None)."""
    d = df[(df["block"] == PROBE_BLOCK) & (df["param"] == "")]
    return d if phase is None else d[d["phase"] == phase]


def has_probes(df: pd.DataFrame, phase: str | None = None) -> bool:
    return not probe_means(df, phase).empty


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around recorded steps: halfway between neighbours (a single step: +-0.5)."""
    s = np.asarray(steps, dtype=float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[2 * s[0] - mid[0]], mid, [2 * s[-1] - mid[-1]]])


def _heat_panels(df: pd.DataFrame, quantity: str, phase: str) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows x steps grid) per block of the decoder layers, and one for the weights outside them."""
    d = df[(df["quantity"] == quantity) & (df["param"] == "") & (df["module"] == "") & (df["block"] != "")]
    layers = sorted(int(v) for v in d[d["layer"] >= 0]["layer"].unique())  # every phase's: frozen layers show grey
    d = d[d["phase"] == phase]
    panels = []
    for block in sorted(d["block"].unique(), key=lambda b: (BLOCK_ORDER.index(b) if b in BLOCK_ORDER else 9, b)):
        part = d[(d["block"] == block) & (d["layer"] >= 0)]
        if len(part):
            grid = part.pivot_table(index="layer", columns="step", values="value", aggfunc="mean", dropna=False)
            panels.append((block, grid.reindex(layers)))
    outside = d[d["layer"] < 0]
    if len(outside):
        grid = outside.pivot_table(index="block", columns="step", values="value", aggfunc="mean", dropna=False)
        order = sorted(grid.index, key=lambda b: (BLOCK_ORDER.index(b) if b in BLOCK_ORDER else 9, b))
        panels.append(("outside layers", grid.reindex(order)))
    return panels


def probe_figure(
    df: pd.DataFrame,
    out_png: str | os.PathLike,
    *,
    phase: str,
    heat: str | None = None,
    scale_values=None,
    title: str | None = None,
) -> Path:
    """One figure, one step axis: the layer x step heatmap of ``heat`` (default the first of
    :data:`HEAT_QUANTITIES` the phase recorded; none: curves only) per block on top, and below it the probes' means
    per kind over the same steps: log-probability of the gold answer, the top-1 share and the style log-odds.
    ``scale_values``: the values the colour scale spans (default this phase's; pass every phase's to compare)."""
    theme()
    means = probe_means(df, phase)
    if means.empty:
        have = sorted(df[df["block"] == PROBE_BLOCK]["phase"].unique())
        raise ValueError(
            f"no probe rows in phase {phase!r} (phases with probe rows: {have}); train with "
            f"--{phase}.probe_every N or a ProbeCallback"
        )
    if heat is None:
        recorded = set(df[(df["phase"] == phase) & (df["param"] == "")]["quantity"])
        heat = next((q for q in HEAT_QUANTITIES if q in recorded), None)
    panels = _heat_panels(df, heat, phase) if heat else []
    curves = [c for c in CURVES if (means["quantity"] == c[0]).any()]
    heights = [max(1.3, 0.16 * len(g)) for _, g in panels] + [1.35] * len(curves)
    fig = plt.figure(figsize=(7.8, sum(heights) + 1.4))
    gs = fig.add_gridspec(len(heights), 2, height_ratios=heights, width_ratios=[40, 1])
    axes = _step_axes(fig, gs, len(heights))
    if panels:
        assert heat is not None  # panels come from a heat quantity
        _heat_rows(fig, gs, axes, panels, heat, scale_values)

    handles = _probe_curves(axes[len(panels) :], means, curves)

    steps = means["step"]
    lo, hi = float(steps.min()) - 0.5, float(steps.max()) + 0.5
    for _, grid in panels:
        e = _edges(grid.columns.to_numpy())
        lo, hi = min(lo, e[0]), max(hi, e[-1])
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlim(lo, hi)
    axes[-1].set_xlabel("optimizer step")
    if handles:
        fig.legend(list(handles.values()), list(handles), title="probes")
    caption = _caption(df, phase, heat, bool(panels), steps.max())
    phase_name = PHASE_TITLES.get(phase, phase)
    suptitle(
        fig,
        title
        or f"{phase_name}: {'where the weights moved and ' if panels else ''}"
        "what the probes scored, over training steps",
    )
    return save_figure(fig, out_png, caption=caption)


def _step_axes(fig, gs, n: int) -> list:
    """``n`` axes stacked in the grid's first column, sharing the first one's step axis."""
    axes, first = [], None
    for i in range(n):
        ax = fig.add_subplot(gs[i, 0], sharex=first)
        first = first or ax
        axes.append(ax)
    return axes


def _heat_rows(fig, gs, axes: list, panels: list[tuple[str, pd.DataFrame]], heat: str, scale_values) -> None:
    """The layer x step heatmaps of ``heat``, one per panel, on one colour scale with its bar beside them."""
    values = pd.concat([g.stack() for _, g in panels]) if scale_values is None else scale_values
    scale = {k: v for k, v in colour_scale(heat, values).items() if k != "center"}
    for ax, (name, grid) in zip(axes, panels):
        steps = grid.columns.to_numpy()
        mesh = ax.pcolormesh(
            _edges(steps), np.arange(len(grid) + 1) - 0.5, np.ma.masked_invalid(grid.to_numpy(dtype=float)), **scale
        )
        ax.set_facecolor(MISSING)
        ax.grid(False)
        every = max(1, math.ceil(len(grid) / 6))
        ax.set_yticks(range(0, len(grid), every), [str(v) for v in grid.index[::every]])
        ax.set_ylabel("layer" if name != "outside layers" else "")
        ax.set_title(f"{label(heat, unit=False)}: {name}", loc="left")
    cax = fig.add_subplot(gs[: len(panels), 1])
    fig.colorbar(mesh, cax=cax, label=label(heat, short=True))


def _probe_curves(axes: list, means: pd.DataFrame, curves: list[tuple[str, str, str]]) -> dict:
    """The probes' means per kind over the steps, one axis per curve; returns the legend's handles by label."""
    palette = sns.color_palette("colorblind")
    colours = {kind: palette[i] for kind, i in zip(KINDS, (0, 1, 2, 4))}  # 3 (vermilion) is too near 1 (orange)
    handles: dict = {}
    for ax, (quantity, what, short) in zip(axes, curves):
        d = means[means["quantity"] == quantity]
        for kind in [k for k in KINDS if k in set(d["module"])] + sorted(set(d["module"]) - set(KINDS)):
            line = d[d["module"] == kind].groupby("step")["value"].mean()
            (h,) = ax.plot(
                line.index,
                line.to_numpy(),
                marker="o",
                markersize=3,
                linewidth=1.2,
                color=colours.get(kind),
                label=KINDS.get(kind, kind),
            )
            handles.setdefault(KINDS.get(kind, kind), h)
        if quantity == "probe_top1":
            ax.set_ylim(-0.03, 1.03)
        if quantity == "style_logodds":
            ax.axhline(0.0, color="#888888", linewidth=0.8)
        ax.set_title(what, loc="left")
        ax.set_ylabel(short)
    return handles


def _caption(df: pd.DataFrame, phase: str, heat: str | None, panels: bool, last_step) -> str:
    """What the figure shows, with the number of probes of each kind (at the last step)."""
    n = probe_means(df[df["step"] == last_step], phase)
    counts = (
        df[(df["block"] == PROBE_BLOCK) & (df["phase"] == phase) & (df["param"] != "") & (df["step"] == last_step)]
        .groupby("module")["param"]
        .nunique()
    )
    sizes = ", ".join(f"{KINDS.get(k, k)} {int(counts.get(k, 0))}" for k in dict.fromkeys(n["module"]))
    top = (
        f"Top: {label(heat or '', unit=False)} per layer and block at the recorded steps (grey: no value). Below: "
        if panels
        else ""
    )
    caption = (
        f"{top}the probes scored by likelihood at each probe step (step 0: before training), means per "
        f"kind over a fixed subset ({sizes}). Top-1: every gold answer token is the model's top choice (QA: "
        "after the chat prompt, a likelihood verdict, not the evaluation's generated-answer QA accuracy)."
    )
    return caption


SWEEP_CURVES = "probe_curves.csv"  # a sweep's probe means per cell and step (written by collect, read by redraw)
SWEEP_FIGURE = "probes_over_steps.png"


def sweep_probe_curves(run_dirs: dict[str, Path], phase: str = "sft") -> pd.DataFrame:
    """The probe means of each run (``{cell: folder}``) that has probe rows in ``phase``: cell, step, quantity,
    module (the kind), value."""
    frames = []
    for cell, folder in run_dirs.items():
        if not (Path(folder) / "records").is_dir():
            continue
        means = probe_means(load_records(folder, quantities=[q for q, _, _ in CURVES]), phase)
        if len(means):
            frames.append(means[["step", "quantity", "module", "value"]].assign(cell=cell))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def sweep_probe_figure(
    curves: pd.DataFrame, out_png: str | os.PathLike, facet: str = "condition", thin: str = "seed", per_row: int = 4
) -> Path:
    """One panel per ``facet`` value (a condition), the probes' mean log-probability per kind as coloured lines
    and the style log-odds below, one thin line per ``thin`` value (a seed) on the shared step axis."""
    theme()
    facets = list(dict.fromkeys(curves[facet]))
    quantities = [q for q in ("probe_logprob", "style_logodds") if (curves["quantity"] == q).any()]
    cols = min(per_row, len(facets))
    rows = math.ceil(len(facets) / cols)
    fig, axes = plt.subplots(
        rows * len(quantities),
        cols,
        figsize=(max(6.0, 3.0 * cols), 2.1 * rows * len(quantities) + 0.8),
        sharex=True,
        sharey="row",
        squeeze=False,
    )
    palette = sns.color_palette("colorblind")
    colours = {kind: palette[i] for kind, i in zip(KINDS, (0, 1, 2, 4))}
    for i, name in enumerate(facets):
        for j, quantity in enumerate(quantities):
            ax = axes[(i // cols) * len(quantities) + j][i % cols]
            d = curves[(curves[facet] == name) & (curves["quantity"] == quantity)]
            for (kind, _), line in d.groupby(["module", thin]):
                line = line.sort_values("step")
                ax.plot(line["step"], line["value"], linewidth=0.9, alpha=0.75, color=colours.get(kind))
            ax.set_title(str(name) if j == 0 else "", loc="left", fontsize=8)
            if i % cols == 0:
                ax.set_ylabel("mean log p" if quantity == "probe_logprob" else "style log-odds", fontsize=8)
    for ax in axes.flat[len(facets) * len(quantities) :]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colours[k], label=KINDS[k]) for k in KINDS if k in set(curves["module"])]
    axes[0][0].legend(handles=handles, fontsize=6, frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step", fontsize=8)
    return save_figure(
        fig,
        out_png,
        caption="probes during training: the gold answers' mean log-probability per "
        f"kind and the style log-odds; one thin line per {thin}",
    )
