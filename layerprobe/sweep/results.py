"""A sweep's results: the table of finished cells, intervals, paired comparisons and figures."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from layerprobe.analyse.answers import ANSWERS_TABLE, answers_table
from layerprobe.analyse.paired import ClaimsConfig, holm, unit_test, verdicts
from layerprobe.core import rundir
from layerprobe.core.rundir import SUMMARY
from layerprobe.core.stats import t_mean_ci, wilson
from layerprobe.evaluation.outcomes import harness_drops, read_outcomes
from layerprobe.sweep.spec import (
    CI_TABLE,
    DIFFERENCES,
    PAIRED_TABLE,
    PHASES,
    RATE_ITEMS,
    RESULTS,
    Sweep,
    _read_state,
    _safe,
)


def flatten(summary: dict, prefix: str = "") -> dict[str, float]:
    """Every number in a summary (nested keys joined by '.'); null metrics become NaN, booleans are left out."""
    out: dict[str, float] = {}
    for k, v in summary.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif v is None and prefix:
            out[key] = math.nan
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def item_counts(run_dir: Path) -> dict[str, float]:
    """``<phase>.<rate>.n``: how many answers each rate is a share of, from ``eval/<phase>-answers.jsonl``."""
    out = {}
    for phase in PHASES:
        f = rundir.answers_path(run_dir, phase)
        if not f.is_file():
            continue
        kinds: dict[str, int] = {}
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                kind = json.loads(line).get("kind", "")
                kinds[kind] = kinds.get(kind, 0) + 1
        for metric, which in RATE_ITEMS.items():
            out[f"{phase}.{metric}.n"] = float(sum(kinds.get(k, 0) for k in which))
    return out


def collect(sweep: Sweep) -> pd.DataFrame:
    """results.csv from the finished cells (all cells of the sweep, not only those run now), and figures."""
    state = _read_state(sweep.out)
    rows = []
    for cell in sweep.cells:
        d = sweep.out / cell.name
        if not (d / SUMMARY).is_file():
            continue
        summary = json.loads((d / SUMMARY).read_text())
        info = state["cells"].get(cell.name, {})
        row = {
            "cell": cell.name,
            **cell.columns,
            **flatten(summary),
            **item_counts(d),
            "reused_cpt_from": info.get("reused_cpt_from") or "",
            "cell_seconds": info.get("seconds", math.nan),
        }
        row.update(read_outcomes(summary, DIFFERENCES + harness_drops(summary)))
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table.to_csv(sweep.out / RESULTS, index=False)
        from layerprobe.plot.probes import SWEEP_CURVES, sweep_probe_curves  # plots load matplotlib: not at import

        answers = answers_table(sweep.out, list(table["cell"]))
        curves = sweep_probe_curves({c: sweep.out / c for c in table["cell"]})
        for folder in dict.fromkeys([sweep.out, sweep.figures]):
            folder.mkdir(parents=True, exist_ok=True)
            answers.to_parquet(folder / ANSWERS_TABLE, index=False)
            if len(curves):
                curves.to_csv(folder / SWEEP_CURVES, index=False, float_format="%.6g")
        write_figures(sweep, table, [sweep.out, sweep.figures])
    return table


def write_figures(sweep: Sweep, table: pd.DataFrame, folders: list[Path]) -> None:
    """The interval tables (ci.csv, paired.csv) into each of ``folders`` and the figures into ``sweep.figures``;
    the figure folder is what a study commits, so results.csv goes beside the figures too."""
    if not sweep.plot:
        return
    folders = list(dict.fromkeys([*folders, sweep.figures]))
    cis = plot_sweep(table, sweep.plot, sweep.axes, sweep.figures, sweep.labels)
    from layerprobe.plot.probes import SWEEP_CURVES, SWEEP_FIGURE, sweep_probe_figure

    if (sweep.figures / SWEEP_CURVES).is_file():  # cells trained with probes: their curves, faceted by condition
        shown = relabel(table, sweep.labels)
        curves = pd.read_csv(sweep.figures / SWEEP_CURVES).merge(shown[["cell", "seed", *sweep.axes]], on="cell")
        curves["condition"] = curves[sweep.axes].astype(str).agg(", ".join, axis=1) if sweep.axes else "all"
        sweep_probe_figure(curves, sweep.figures / SWEEP_FIGURE)
    for folder in folders:
        cis.to_csv(folder / CI_TABLE, index=False)
    table.to_csv(sweep.figures / RESULTS, index=False)
    if sweep.baseline:
        metrics = [m for p in _panels(sweep.plot) for m in p if m in table]
        keys = ["seed"] + [a for a in sweep.axes if a != "group"]
        paired = paired_table(table, metrics, sweep.baseline, keys)
        for folder in folders:
            paired.to_csv(folder / PAIRED_TABLE, index=False)
        plot_paired(paired, sweep.figures / "paired.png", sweep.baseline)


def redraw(sweep: Sweep) -> pd.DataFrame:
    """Figures and interval tables again from the committed ``<figures>/results.csv`` alone (no cell folders, no
    training): how a study's figures are regenerated after a change of style."""
    src = sweep.figures / RESULTS
    if not src.is_file():
        raise FileNotFoundError(
            f"no {src}: expected the sweep's committed results table there; run the sweep "
            f"(`layerprobe sweep {sweep.source or 'SWEEP.yaml'}`) or --collect first"
        )
    table = pd.read_csv(src)
    for col in ("condition", "group", "reused_cpt_from"):
        if col in table:
            table[col] = table[col].fillna("").astype(str)
    write_figures(sweep, table, [sweep.figures])
    return table


def summarize(table: pd.DataFrame, metric: str, by: list[str]) -> pd.DataFrame:
    """Mean of ``metric`` per group of ``by`` with a 95 % interval.

    Several cells (seeds): Student t interval of the mean over cells. One cell and a rate with known item
    count (``<metric>.n``): Wilson. Otherwise no interval. Columns: by..., n_cells, mean, lo, hi, ci.
    """

    if metric not in table:
        raise ValueError(f"metric {metric!r} is not in the results; it has {', '.join(table.columns)}")
    rows = []
    groups = table.groupby(by, sort=False, dropna=False) if by else [((), table)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        values = g[metric].dropna().to_numpy(dtype=float)
        row = dict(zip(by, key))
        row.update(metric=metric, n_cells=len(values), mean=math.nan, lo=math.nan, hi=math.nan, ci="none")
        if len(values):
            row["mean"] = float(values.mean())
        if len(values) > 1:
            lo, hi = t_mean_ci(values)
            if f"{metric}.n" in g:  # a rate: the interval stays inside [0, 1]
                lo, hi = max(lo, 0.0), min(hi, 1.0)
            row["lo"], row["hi"], row["ci"] = lo, hi, f"t over {len(values)} cells"
        elif (
            len(values) == 1 and f"{metric}.n" in g and g[f"{metric}.n"].notna().all() and g[f"{metric}.n"].iloc[0] > 0
        ):
            n = int(g[f"{metric}.n"].iloc[0])
            row["lo"], row["hi"] = wilson(round(values[0] * n), n)
            row["ci"] = f"Wilson (n={n})"
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(table: pd.DataFrame, metrics: list[str], baseline: str, keys: list[str]) -> pd.DataFrame:
    """Each condition minus ``baseline`` on the cells that share ``keys`` (seed and grid values: the units), per
    metric, decided as a family of claims with the unit as the unit (:mod:`layerprobe.analyse.paired`): the mean of the
    per-unit differences with its t interval, the paired t-test's p, TOST against the metric's default margin
    (:class:`layerprobe.analyse.paired.ClaimsConfig`; none for metrics without one), Holm over the whole table and the
    verdict; ``mde`` and ``units_needed`` at alpha / the number of tested pairs. Columns: condition, metric,
    baseline_mean, mean, n_pairs, mean_diff, lo, hi, p, p_tost, p_holm, p_tost_holm, verdict, mde, units_needed."""

    config = ClaimsConfig()
    base = table[table["condition"] == baseline].set_index(keys)
    found = []
    for cond in dict.fromkeys(table["condition"]):
        if cond == baseline:
            continue
        other = table[table["condition"] == cond].set_index(keys)
        shared = other.index.intersection(base.index)
        for m in metrics:
            pairs = pd.DataFrame({"b": base.loc[shared, m], "t": other.loc[shared, m]}).dropna()
            if not pairs.empty and (pairs["t"] != pairs["b"]).any():  # equal on every unit: shared by design
                found.append((cond, m, pairs))
    family = max(1, sum(len(p) > 1 for _, _, p in found))  # the power figures at Holm's first-step level
    rows = []
    for cond, m, pairs in found:
        margin = config.margins.get(m.split(".", 1)[-1], math.nan)
        test = unit_test((pairs["t"] - pairs["b"]).to_numpy(), margin, config.alpha / family, config.power)
        rows.append(
            {
                "condition": cond,
                "metric": m,
                "baseline_mean": float(pairs["b"].mean()),
                "mean": float(pairs["t"].mean()),
                "n_pairs": test["n_units"],
                "mean_diff": test["diff"],
                **{k: test[k] for k in ("lo", "hi", "p", "p_tost", "mde", "units_needed")},
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"], out["p_tost_holm"] = holm(out["p"]), holm(out["p_tost"])
    out["verdict"] = verdicts(out["p_holm"], out["p_tost_holm"], config.alpha)
    return out


def plot_paired(paired: pd.DataFrame, path: Path, baseline: str = "the baseline") -> None:
    """One panel per metric: each condition's mean difference from the baseline with its 95 % t interval (drawn by
    :func:`layerprobe.plot.study.paired_panel`). Metrics equal in every pair (those of a shared CPT) are left out."""
    from layerprobe.plot.study import paired_panel

    paired_panel(paired, path, baseline)


def format_results(table: pd.DataFrame, columns: list[str], metrics: list[str]) -> str:
    """The table printed at the end of a sweep: the cell columns and the chosen metrics that exist."""
    metrics = [m for m in metrics if m in table]
    show = table[[c for c in ["cell", *columns] if c in table] + metrics].copy()
    return show.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def _panels(plot: list) -> list[list[str]]:
    out = []
    for p in plot:
        metrics = [p] if isinstance(p, str) else list(p) if isinstance(p, (list, tuple)) else None
        if not metrics or not all(isinstance(m, str) for m in metrics):
            raise ValueError(f"each plot entry must be a metric name or a list of them, got {p!r}")
        out.append(metrics)
    return out


def relabel(table: pd.DataFrame, labels: dict[str, dict[str, str]] | None) -> pd.DataFrame:
    """The table with each labelled axis's values replaced by the names shown (the sweep YAML's ``labels:``)."""
    if not labels:
        return table
    table = table.copy()
    for key, names in labels.items():
        if key in table:
            table[key] = table[key].astype(str).replace(names)
    return table


def plot_sweep(
    table: pd.DataFrame,
    plot: list,
    axes: list[str],
    out_dir: str | os.PathLike,
    labels: dict[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """One figure per panel: the mean of each metric per condition with its 95 % interval (see :func:`summarize`),
    the design's factors as facets (drawn by :func:`layerprobe.plot.study.sweep_panel`), axis values named by
    ``labels``.

    Returns the table of means and intervals of every plotted metric (what ci.csv holds).
    """
    from layerprobe.plot.study import sweep_panel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = relabel(table, labels)
    panels = _panels(plot)
    missing = sorted({m for p in panels for m in p if m not in table})
    if missing:  # metrics depend on the data (mc_acc needs data.mc): a panel without its metrics is left out
        print(f"plot: {', '.join(missing)} not in the results (not measured with this data), left out")
        panels = [[m for m in p if m in table] for p in panels]
        panels = [p for p in panels if p]
    by = [a for a in axes if a in table]
    frames = []
    for metrics in panels:
        stats = pd.concat([summarize(table, m, by) for m in metrics], ignore_index=True)
        frames.append(stats)
        sweep_panel(stats, by, out_dir / f"{_safe('+'.join(metrics))}.png")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
