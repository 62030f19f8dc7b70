"""Seaborn heatmaps drawn from records alone (this module never imports torch).

Reads the aggregated rows of the records table (``param == ""``): ``module == ""`` rows are per (layer, block),
the others per (layer, block, module). Weights outside the decoder stack (embeddings, final norm, head; layer
-1) are drawn beside the layers on the same colour scale.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from layerprobe.records import load_records  # noqa: E402

BLOCK_ORDER = ("embed", "attn", "mlp", "norm", "head", "other")
LABELS = {
    "grad_norm": "gradient norm (pre-clip)",
    "update_ratio": "update ratio ||W(t+1) - W(t)|| / ||W(t)||",
    "drift_ratio": "drift ||W(t) - W(start)|| / ||W(start)||",
    "weight_norm": "weight norm",
    "rel_change": "relative change ||B - A|| / ||A||",
    "undo_frac": "share of the CPT change undone by SFT",
    "cos_cpt_sft": "cos(dCPT, dSFT)",
}
LOG_SCALE = {"grad_norm", "update_ratio", "drift_ratio", "rel_change", "delta_norm"}


def _select(df: pd.DataFrame, quantity: str, phase: str | None, run: str | None) -> pd.DataFrame:
    d = df[(df["quantity"] == quantity) & (df["param"] == "")]
    if phase is not None:
        d = d[d["phase"] == phase]
    if run is not None:
        d = d[d["run"] == run]
    if d.empty:
        have = sorted(df["quantity"].unique())
        raise ValueError(f"no aggregated rows of quantity {quantity!r}"
                         f"{f' in phase {phase!r}' if phase else ''}; the records have {have}")
    return d


def _norm_for(quantity: str, values: np.ndarray):
    from matplotlib.colors import LogNorm

    pos = values[np.isfinite(values) & (values > 0)]
    if quantity in LOG_SCALE and pos.size and pos.max() / pos.min() > 50:
        return LogNorm(vmin=pos.min(), vmax=pos.max())
    return None


def heatmap_layer_step(df: pd.DataFrame, quantity: str, out_png: str | os.PathLike, *, phase: str | None = None,
                       run: str | None = None, blocks: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Layer x step heatmap of ``quantity``: one panel per block of the decoder layers, and one panel whose rows
    are the weights outside the layers (embeddings, final norm, head)."""
    d = _select(df, quantity, phase, run)
    d = d[(d["module"] == "") & (blocks is None or d["block"].isin(list(blocks or [])))]
    inside = [b for b in BLOCK_ORDER if ((d["block"] == b) & (d["layer"] >= 0)).any()]
    outside = d[d["layer"] < 0]
    panels = [(b, d[(d["block"] == b) & (d["layer"] >= 0)], "layer") for b in inside]
    if not outside.empty:
        panels.append(("outside layers", outside, "block"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 4.5), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0] * len(panels)})
    norm = _norm_for(quantity, d["value"].to_numpy())
    vals = d["value"].to_numpy()
    vmin, vmax = np.nanmin(vals), np.nanmax(vals)
    for i, (ax, (name, part, rows)) in enumerate(zip(axes[0], panels)):
        grid = part.pivot_table(index=rows, columns="step", values="value", aggfunc="mean")
        grid = grid.sort_index(ascending=False)
        sns.heatmap(grid, ax=ax, cmap="viridis", norm=norm, vmin=None if norm else vmin, vmax=None if norm else vmax,
                    cbar=i == len(panels) - 1, cbar_kws={"label": quantity},
                    xticklabels=max(1, grid.shape[1] // 8), yticklabels=True)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(rows if i in (0, len(panels) - 1) else "")
    fig.suptitle(title or f"{LABELS.get(quantity, quantity)}{f' — {phase}' if phase else ''}")
    return save_figure(fig, out_png)


def heatmap_layer_module(df: pd.DataFrame, quantity: str, out_png: str | os.PathLike, *, step: int | None = None,
                         phase: str | None = None, run: str | None = None, title: str | None = None,
                         center: float | None = None) -> Path:
    """Layer x module heatmap of ``quantity`` at one step (default: the last). Columns are grouped by block;
    weights outside the decoder layers (embeddings, final norm, head) fill the bottom row ``outside``."""
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
    grid = grid.sort_index(ascending=False)
    grid.index = ["outside" if i < 0 else str(i) for i in grid.index]
    vals = grid.to_numpy()
    norm = None if center is not None else _norm_for(quantity, vals)
    kw = {}
    if center is not None:
        span = np.nanmax(np.abs(vals - center)) or 1.0
        kw = {"center": center, "vmin": center - span, "vmax": center + span}
    fig, ax = plt.subplots(figsize=(0.75 * len(cols) + 3, 0.32 * len(grid) + 2.2))
    sns.heatmap(grid, ax=ax, cmap="vlag" if center is not None else "viridis", norm=norm,
                cbar_kws={"label": quantity}, annot=grid.size <= 120, fmt=".2g",
                annot_kws={"fontsize": 7}, yticklabels=True, **kw)
    ax.set_xlabel("block.module")
    ax.set_ylabel("layer")
    ax.tick_params(axis="x", rotation=60)
    where = "" if step < 0 else f" at step {step}"
    ax.set_title(title or f"{LABELS.get(quantity, quantity)}{f' — {phase}' if phase else ''}{where}")
    return save_figure(fig, out_png)


def plot_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
             quantities: Iterable[str] = ("grad_norm", "update_ratio", "drift_ratio")) -> list[Path]:
    """Draw the standard figures of a run folder into ``<run_dir>/figures`` (or ``out_dir``): per phase, layer x
    step of each quantity and layer x module of the final drift."""
    df = load_records(run_dir)
    quantities = list(quantities)
    agg = df[df["param"] == ""]
    if not agg["quantity"].isin(quantities).any():
        raise ValueError(f"nothing to plot in {run_dir}: no aggregated rows of {quantities}; "
                         f"the records have {sorted(agg['quantity'].unique())}")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "figures"
    paths = []
    for phase in sorted(agg["phase"].unique()):
        have = set(agg[agg["phase"] == phase]["quantity"])
        for q in quantities:
            if q in have:
                paths.append(heatmap_layer_step(df, q, out / f"{phase}_{q}_layer_step.png", phase=phase))
        if "drift_ratio" in have and "drift_ratio" in quantities:
            paths.append(heatmap_layer_module(df, "drift_ratio", out / f"{phase}_drift_layer_module.png", phase=phase))
    return paths


def save_figure(fig, out_png, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a figure: every PNG layerprobe draws goes through here."""
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
