"""Seaborn heatmaps drawn from records alone (this module never imports torch).

Reads the aggregated rows of the records table (``param == ""``): ``module == ""`` rows are per (layer, block),
the others per (layer, block, module). Weights outside the decoder stack (embeddings, final norm, head; layer
-1) are drawn beside the layers on the same colour scale. Cells without a value (frozen, not recorded,
undefined) and weights a diff found untouched (exactly 0) are masked in grey, never drawn as 0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from layerprobe.core import rundir
from layerprobe.plot.probes import FIGURE, HEAT_QUANTITIES, has_probes, probe_figure
from layerprobe.plot.style import (
    BLOCK_ORDER,
    MISSING,
    PHASE_TITLES,
    colour_scale,
    label,
    quantity,
    save_figure,
    suptitle,
    theme,
)
from layerprobe.record.records import load_records

# diff quantities whose exact 0 means "this weight was not changed" (a real change never gives exactly 0)
UNTOUCHED_AT_ZERO = {"delta_norm", "rel_change", "rel_change_bc", "rel_change_ac", "delta_norm_bc", "delta_norm_ac"}


def _select(df: pd.DataFrame, quantity_name: str, phase: str | None, run: str | None) -> pd.DataFrame:
    d = df[(df["quantity"] == quantity_name) & (df["param"] == "")]
    if phase is not None:
        d = d[d["phase"] == phase]
    if run is not None:
        d = d[d["run"] == run]
    if d.empty:
        have = sorted(df["quantity"].unique())
        raise ValueError(
            f"no aggregated rows of quantity {quantity_name!r}"
            f"{f' in phase {phase!r}' if phase else ''}; the records have {have}"
        )
    return d


def _all_layers(df: pd.DataFrame, quantity_name: str) -> list[int]:
    """The decoder layers any phase has rows of ``quantity_name`` for (so that one frozen in a phase shows)."""
    d = df[(df["quantity"] == quantity_name) & (df["layer"] >= 0)]
    return sorted(int(v) for v in d["layer"].unique())


def _title(quantity_name: str, phase: str | None, where: str = "") -> str:
    return f"{label(quantity_name, unit=False)}{f' - {PHASE_TITLES.get(phase, phase)}' if phase else ''}{where}"


def heatmap_layer_step(
    df: pd.DataFrame,
    quantity: str,
    out_png: str | os.PathLike,
    *,
    phase: str | None = None,
    run: str | None = None,
    blocks: Sequence[str] | None = None,
    title: str | None = None,
    scale_values=None,
) -> Path:
    """Layer x step heatmap of ``quantity``: one panel per block of the decoder layers, and one panel whose rows
    are the weights outside the layers (embeddings, final norm, head). ``scale_values``: the values the colour
    scale spans (default: this figure's); pass every phase's to compare phases on one scale."""
    theme()
    d = _select(df, quantity, phase, run)
    layers = _all_layers(df, quantity)
    d = d[(d["module"] == "") & (blocks is None or d["block"].isin(list(blocks or [])))]
    inside = [b for b in BLOCK_ORDER if ((d["block"] == b) & (d["layer"] >= 0)).any()]
    outside = d[d["layer"] < 0]
    panels = [(b, d[(d["block"] == b) & (d["layer"] >= 0)], "layer") for b in inside]
    if not outside.empty:
        panels.append(("outside layers", outside, "block"))
    scale = colour_scale(quantity, d["value"] if scale_values is None else scale_values)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.6, 4.2), squeeze=False)
    for i, (ax, (name, part, rows)) in enumerate(zip(axes[0], panels)):
        grid = part.pivot_table(index=rows, columns="step", values="value", aggfunc="mean", dropna=False)
        if rows == "layer":  # a layer frozen in this phase has no rows: it shows as a grey row, not as absent
            grid = grid.reindex(layers)
        grid = grid.sort_index(ascending=False)
        ax.set_facecolor(MISSING)
        sns.heatmap(
            grid,
            ax=ax,
            **scale,
            cbar=i == len(panels) - 1,
            cbar_kws={"label": label(quantity, short=True)},
            xticklabels=max(1, -(-grid.shape[1] // 6)),
            yticklabels=max(1, -(-grid.shape[0] // 16)),  # a label per layer fits up to 16 rows at this height
        )
        ax.tick_params(axis="x", rotation=0)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(rows if i in (0, len(panels) - 1) else "")
    suptitle(fig, title or _title(quantity, phase))
    return save_figure(fig, out_png, caption="Grey: no value (frozen or not recorded).")


def heatmap_layer_module(
    df: pd.DataFrame,
    quantity: str,
    out_png: str | os.PathLike,
    *,
    step: int | None = None,
    phase: str | None = None,
    run: str | None = None,
    title: str | None = None,
    center: float | None = None,
    scale_values=None,
) -> Path:
    """Layer x module heatmap of ``quantity`` at one step (default: the last). Columns are grouped by block;
    weights outside the decoder layers (embeddings, final norm, head) fill the bottom row ``outside``. Signed
    quantities (or ``center``) use a diverging map centred there; cells without a value, and for diff
    quantities weights left exactly unchanged, are grey."""
    theme()
    d = _select(df, quantity, phase, run)
    d = d[d["module"] != ""]
    step = int(d["step"].max()) if step is None else step
    d = d[d["step"] == step].copy()
    if d.empty:
        raise ValueError(f"no rows of {quantity!r} at step {step}")
    order = {b: i for i, b in enumerate(BLOCK_ORDER)}
    d["column"] = d["block"] + "." + d["module"]
    cols = sorted(d["column"].unique(), key=lambda c: (order.get(c.split(".")[0], 9), c))
    grid = d.pivot_table(index="layer", columns="column", values="value", aggfunc="mean", dropna=False)
    grid = grid.reindex(columns=cols).dropna(axis=1, how="all")  # e.g. undo_frac is undefined where dCPT = 0
    outside = [-1] if (grid.index < 0).any() else []
    grid = grid.reindex(_all_layers(df, quantity) + outside).sort_index(ascending=False)  # frozen layers: grey
    grid.index = ["outside" if i < 0 else str(i) for i in grid.index]
    untouched = quantity in UNTOUCHED_AT_ZERO and bool((grid == 0).any().any())
    if quantity in UNTOUCHED_AT_ZERO:
        grid = grid.mask(grid == 0)
    scale = colour_scale(quantity, grid.to_numpy() if scale_values is None else scale_values, center)
    fig, ax = plt.subplots(figsize=(0.62 * len(grid.columns) + 3.4, 0.36 * len(grid) + 2.6))
    ax.set_facecolor(MISSING)
    sns.heatmap(
        grid,
        ax=ax,
        **scale,
        cbar_kws={"label": label(quantity, short=True)},
        annot=grid.size <= 120,
        fmt=".2g",
        annot_kws={"fontsize": 6},
        xticklabels=True,
        yticklabels=True,
    )
    ax.set_xlabel("block.module")
    ax.set_ylabel("layer")
    ax.tick_params(axis="x", rotation=90)
    ax.tick_params(axis="y", rotation=0)
    where = "" if step < 0 else f" at step {step}"
    ax.set_title(title or _title(quantity, phase, where))
    caption = "Grey: no value (not trained, frozen or undefined)" + (
        "; also weights left exactly unchanged." if untouched else "."
    )
    return save_figure(fig, out_png, caption=caption)


def plot_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    quantities: Iterable[str] = ("grad_norm", "update_ratio", "drift_ratio"),
) -> list[Path]:
    """Draw the standard figures of a run folder into ``<run_dir>/figures`` (or ``out_dir``): per phase, layer x
    step of each quantity, layer x module of the final drift and, where the phase was probed
    (:mod:`layerprobe.train.probes`), the probes over steps under the drift heatmap (:func:`~layerprobe.plot.probes.
    probe_figure`, ``<phase>_probes_over_steps.png``). Phases share one colour scale per quantity."""
    df = load_records(run_dir)
    quantities = list(quantities)
    agg = df[(df["param"] == "") & (df["phase"] != "diff")]
    if not agg["quantity"].isin(quantities).any() and not has_probes(agg):
        raise ValueError(
            f"nothing to plot in {run_dir}: no aggregated rows of {quantities} and no probe rows; "
            f"the records have {sorted(agg['quantity'].unique())}"
        )
    out = Path(out_dir) if out_dir is not None else rundir.figures_dir(run_dir)
    paths = []
    phases = [p for p in ("cpt", "sft") if p in set(agg["phase"])] + sorted(set(agg["phase"]) - {"cpt", "sft"})
    for phase in phases:
        have = set(agg[agg["phase"] == phase]["quantity"])
        for q in quantities:
            if q in have:
                both = agg[(agg["quantity"] == q) & (agg["module"] == "")]["value"]
                paths.append(
                    heatmap_layer_step(df, q, out / f"{phase}_{q}_layer_step.png", phase=phase, scale_values=both)
                )
        if "drift_ratio" in have and "drift_ratio" in quantities:
            last = agg[(agg["quantity"] == "drift_ratio") & (agg["module"] != "")]
            last = last[last["step"] == last.groupby("phase")["step"].transform("max")]["value"]
            paths.append(
                heatmap_layer_module(
                    df, "drift_ratio", out / f"{phase}_drift_layer_module.png", phase=phase, scale_values=last
                )
            )
        if has_probes(agg, phase):  # on the phase's own colour scale: it shows when, within the phase
            heat = next((q for q in HEAT_QUANTITIES if q in have), None)
            paths.append(probe_figure(df, out / f"{phase}_{FIGURE}.png", phase=phase, heat=heat))
    return paths


__all__ = ["BLOCK_ORDER", "heatmap_layer_module", "heatmap_layer_step", "plot_run", "quantity", "save_figure"]
