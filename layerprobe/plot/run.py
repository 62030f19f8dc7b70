"""Every figure of one run folder: training heatmaps (records), the three-way diff and the causal attribution when
the run holds them. Where those live inside a run folder is :mod:`layerprobe.core.rundir`'s to say."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from layerprobe.core import rundir
from layerprobe.plot.effects import attribution_figures
from layerprobe.plot.heatmaps import heatmap_layer_module, plot_run
from layerprobe.record.records import load_records

DIFF_QUANTITIES = ("rel_change", "rel_change_bc", "undo_frac", "cos_cpt_sft", "cosine", "delta_norm")


def diff_records(run: Path) -> pd.DataFrame | None:
    """The run's diff records (phase ``diff``) from ``RUN/diff/*.parquet|csv`` and from its records, if any."""

    frames = []
    if rundir.records_dir(run).is_dir():
        try:
            rec = load_records(rundir.records_dir(run))
            frames.append(rec[rec["phase"] == "diff"])
        except (FileNotFoundError, ValueError):
            pass
    diff_dir = rundir.diff_dir(run)
    for f in sorted(diff_dir.glob("*.parquet")) + sorted(diff_dir.glob("*.csv")):
        frames.append(load_records(f))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def diff_figures(diff: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    """One layer x module heatmap (``diff_<quantity>.png``) per diff quantity present."""

    have = [q for q in DIFF_QUANTITIES if (diff["quantity"] == q).any()]
    return [heatmap_layer_module(diff, q, Path(out_dir) / f"diff_{q}.png", phase="diff") for q in have]


def run_figures(run: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Training heatmaps, diff heatmaps and attribution figures of a run folder into ``out_dir`` (default
    ``RUN/figures``), each only when the run holds its data."""

    run = Path(run)
    out = Path(out_dir) if out_dir is not None else rundir.figures_dir(run)
    paths = []
    try:
        paths += plot_run(run, out)
    except (FileNotFoundError, ValueError):
        pass  # no training records (trained without --record)
    diff = diff_records(run)
    if diff is not None:
        paths += diff_figures(diff, out)
    attribution = rundir.attribute_records(rundir.attribute_dir(run))
    if attribution.is_file():
        paths += attribution_figures(load_records(attribution), out)
    if not paths:
        raise ValueError(
            f"nothing to draw in {run}: expected records/ (train with --record), {rundir.DIFF}/*.parquet "
            f"(layerprobe diff ... --out {rundir.diff_dir(run)}/diff.parquet) or "
            f"{attribution.relative_to(run)} (layerprobe attribute --run {run})"
        )
    return paths
