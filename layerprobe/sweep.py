"""Sweeps: a grid of pipeline runs (conditions x grid x seeds), each cell a normal run folder, resumable.

A sweep YAML::

    base: config.yaml                  # a TrainConfig YAML (relative to this file) or an inline mapping
    set: {eval.base: false}            # optional: dotted overrides of the base for every cell
    grid:                              # dotted key -> values (cartesian product); a mapping names its values
      cpt.lora_alpha: [32, 128]
      sft.target_modules: {A: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj],
                           B: [q_proj, k_proj, v_proj, o_proj]}
    conditions:                        # optional, non-cartesian designs: a name, an optional group, overrides
      - {name: mlp, sft.select: "mlp + head"}
      - {name: random10-s0, group: random10, sft.select: "random:10%@seed=0 + head"}
    seeds: [3407]                      # sets `seed`
    out: runs/study_a                  # default sweep folder
    reuse_from: [runs/study_a]         # optional: other sweep folders whose finished CPTs may be reused
    figures: figures/study_a           # optional: figures + copies of results.csv, ci.csv (default <out>/figures)
    plot: [sft.gozaru_rate, [cpt.cloze_acc, sft.cloze_acc]]   # optional panels (a list = metrics side by side)
    baseline: mlp                      # optional: a condition; every other one is compared with it seed by seed

Cells are ``condition x grid x seeds``, named ``<condition>,<key>=<value>,...,seed=<seed>`` (stable, readable),
each a run folder ``<out>/<cell>``. A cell with a summary.json is skipped; a cell folder made with another
config is refused by the pipeline. A cell whose CPT and merge fingerprints (:mod:`layerprobe.fingerprint`: the
base model, the CPT documents, the CPT settings) equal those of a finished cell, here or in ``reuse_from``, starts
from hard-linked copies of that cell's CPT and merge (the pipeline's ``reuse_from``), so it skips them.

``<out>/results.csv`` has one row per finished cell: the cell's columns (condition, group, grid labels, seed)
and every number in its summary.json flattened (``cpt.cloze_acc``, ``sft.gozaru_rate``,
``stages.sft.seconds``), item counts of the rates (``sft.gozaru_rate.n``, from the answers files), and the
outcomes of :mod:`layerprobe.outcomes` that combine two numbers (``retention_drop = cpt.cloze_acc - sft.cloze_acc``,
``qa_drop``, ``loss_rise``). ``<out>/ci.csv`` has each plotted metric's mean per
condition with a 95 % interval; with ``baseline:``, ``<out>/paired.csv`` has each condition's paired difference
from the baseline (same seed and grid values) with a t interval and p-value, and ``paired.png`` shows them.
``<out>/sweep.json`` records cells, wall times and reuse.
This module never imports torch; the pipeline is imported only to run cells.
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from layerprobe import rundir
from layerprobe.config import TrainConfig, load_yaml, resolve
from layerprobe.outcomes import OUTCOMES, read_outcomes
from layerprobe.rundir import SUMMARY
RESULTS = "results.csv"
SWEEP_JSON = "sweep.json"
CI_TABLE = "ci.csv"
PAIRED_TABLE = "paired.csv"
# Rate metrics and the answer kinds (eval/<phase>-answers.jsonl) they are a share of: their n for Wilson.
RATE_ITEMS = {"cloze_acc": ("cloze",), "qa_acc": ("qa",), "gozaru_rate": ("instruction",),
              "eos_rate": ("qa", "instruction")}
PHASES = rundir.EVAL_PHASES
DIFFERENCES = [name for name, (definition, _) in OUTCOMES.items() if " - " in definition]  # not plain copies
_SAFE = re.compile(r"[^\w.%+@=,-]+")


@dataclass
class Cell:
    """One run of a sweep: its folder name, table columns, dotted overrides and resolved config."""

    name: str
    columns: dict[str, Any]
    overrides: dict[str, Any]
    config: TrainConfig


@dataclass
class Sweep:
    """A parsed sweep YAML: the cells to run and where results go."""

    cells: list[Cell]
    out: Path
    figures: Path
    plot: list
    axes: list[str]  # the table columns that tell cells apart (seed excluded)
    source: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    reuse_from: list[Path] = field(default_factory=list)  # other sweep folders whose finished CPTs may be reused
    baseline: str = ""  # a condition every other one is compared with, seed by seed


# -- reading a sweep ---------------------------------------------------------------------------------------------


def _set_dotted(data: dict, dotted: str, value) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p, {}), dict):
            raise ValueError(f"cannot set {dotted!r}: {p!r} is a value, not a section")
        node = node.setdefault(p, {})
    node[leaf] = copy.deepcopy(value)


def _label(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "+".join(_label(v) for v in value)
    return str(value)


def _safe(name: str) -> str:
    return _SAFE.sub("_", name).strip("._") or "cell"


def _axis(key: str, values) -> list[tuple[str, Any]]:
    """A grid axis as (label, value) pairs: a list labels values by themselves, a mapping by its keys."""
    if isinstance(values, dict):
        pairs = [(str(k), v) for k, v in values.items()]
    elif isinstance(values, (list, tuple)):
        pairs = [(_label(v), v) for v in values]
    else:
        raise ValueError(f"grid.{key} must be a list of values or a mapping name -> value, got {values!r}")
    if not pairs:
        raise ValueError(f"grid.{key} has no values; give at least one")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"grid.{key} has repeated values {labels}; name them with a mapping (A: ..., B: ...)")
    return pairs


def _conditions(raw) -> list[tuple[str, str, dict]]:
    if raw is None:
        return [("", "", {})]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"conditions must be a non-empty list of mappings with a name and dotted overrides, "
                         f"got {raw!r}")
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or not c.get("name"):
            raise ValueError(f"condition {i} must be a mapping with a 'name' and dotted overrides such as "
                             f"sft.select: 'mlp + head'; got {c!r}")
        over = {k: v for k, v in c.items() if k not in ("name", "group")}
        out.append((str(c["name"]), str(c.get("group") or c["name"]), over))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique, got {names}")
    return out


def load_sweep(spec: str | os.PathLike | dict, out: str | os.PathLike | None = None,
               overrides: dict[str, Any] | None = None, figures: str | os.PathLike | None = None) -> Sweep:
    """Read a sweep YAML (or mapping) into its cells; ``overrides`` (dotted) apply to every cell's base config."""
    where = Path(spec).parent if not isinstance(spec, dict) else Path(".")
    data = dict(spec) if isinstance(spec, dict) else load_yaml(spec)
    known = {"base", "set", "grid", "conditions", "seeds", "out", "figures", "plot", "reuse_from", "baseline"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown sweep key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
    base = data.get("base", {})
    if isinstance(base, (str, os.PathLike)):
        path = Path(base)
        path = where / path if not path.is_absolute() and (where / path).is_file() else path
        base = load_yaml(path)
    if not isinstance(base, dict):
        raise ValueError(f"sweep base must be a config YAML path or a mapping, got {base!r}")
    base = copy.deepcopy(base)
    common = data.get("set") or {}
    if not isinstance(common, dict):
        raise ValueError(f"set must map dotted config keys to values for every cell, got {common!r}")
    for k, v in {**common, **(overrides or {})}.items():
        _set_dotted(base, k, v)
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ValueError(f"grid must map dotted config keys to value lists, got {grid!r}")
    axes = [(k, _axis(k, v)) for k, v in grid.items()]
    conditions = _conditions(data.get("conditions"))
    seeds = data.get("seeds")
    if seeds is None:
        seeds = [resolve(base).seed]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                              for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if "seed" in grid:
        raise ValueError("set seeds with the 'seeds:' list, not in grid")

    cells: list[Cell] = []
    for (cname, group, cover), choice, seed in itertools.product(
            conditions, itertools.product(*[pairs for _, pairs in axes]), seeds):
        cfg_data = copy.deepcopy(base)
        over: dict[str, Any] = {}
        columns: dict[str, Any] = {}
        if cname:
            columns.update(condition=cname, group=group)
        over.update(cover)
        for (key, _), (label, value) in zip(axes, choice):
            over[key] = value
            columns[key] = label
        over["seed"] = seed
        columns["seed"] = seed
        for k, v in over.items():
            _set_dotted(cfg_data, k, v)
        parts = ([cname] if cname else []) + [f"{k}={label}" for (k, _), (label, _) in zip(axes, choice)]
        name = _safe(",".join(parts + [f"seed={seed}"]))
        try:
            cfg = resolve(cfg_data)
        except ValueError as e:
            raise ValueError(f"sweep cell {name}: {e}") from None
        cells.append(Cell(name, columns, over, cfg))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError(f"two cells share a folder name ({sorted({n for n in names if names.count(n) > 1})[0]}); "
                         "give conditions distinct names")
    out_dir = Path(out or data.get("out") or "runs/sweep")
    fig_dir = Path(figures or data.get("figures") or out_dir / "figures")
    axis_cols = (["group"] if conditions[0][0] else []) + [k for k, _ in axes]
    plot = data.get("plot") or []
    if not isinstance(plot, list):
        raise ValueError(f"plot must be a list of metrics (or lists of metrics shown side by side), got {plot!r}")
    reuse_from = data.get("reuse_from") or []
    if not isinstance(reuse_from, list) or not all(isinstance(r, str) for r in reuse_from):
        raise ValueError(f"reuse_from must be a list of sweep folders, got {reuse_from!r}")
    baseline = data.get("baseline") or ""
    if baseline and baseline not in [c[0] for c in conditions]:
        raise ValueError(f"baseline {baseline!r} is not a condition; the conditions are "
                         f"{', '.join(c[0] for c in conditions if c[0]) or 'none (add conditions:)'}")
    return Sweep(cells, out_dir, fig_dir, plot, axis_cols, "" if isinstance(spec, dict) else str(spec),
                 dict(overrides or {}), [Path(r) for r in reuse_from], baseline)


def select_cells(sweep: Sweep, only: str | None) -> list[Cell]:
    if not only:
        return sweep.cells
    chosen = [c for c in sweep.cells if fnmatch.fnmatchcase(c.name, only)]
    if not chosen:
        raise ValueError(f"--only {only!r} matches no cell; the cells are: {', '.join(c.name for c in sweep.cells)}")
    return chosen


# -- running -----------------------------------------------------------------------------------------------------


def run_sweep(sweep: Sweep, only: str | None = None, log: Callable[[str], None] = print,
              pipeline_log: Callable[[str], None] | None = None, reuse: bool = True) -> pd.DataFrame:
    """Run every cell not yet finished, then write results.csv, figures and sweep.json; returns the table."""
    from layerprobe.pipeline import run_pipeline

    cells = select_cells(sweep, only)
    sweep.out.mkdir(parents=True, exist_ok=True)
    state = _read_state(sweep.out)
    t_sweep = time.time()
    failed: dict[str, str] = {}
    # finished CPTs of any cell (this run's selection or not) and of the reuse_from sweeps: the pipeline links in
    # one whose CPT and merge fingerprints equal the cell's
    donors = [sweep.out, *sweep.reuse_from] if reuse else []
    for i, cell in enumerate(cells, 1):
        d = sweep.out / cell.name
        head = f"[{i}/{len(cells)}] {cell.name}"
        if (d / SUMMARY).is_file():
            log(f"{head}: finished, skipped")
            continue
        t0 = time.time()
        before = rundir.done_stages(d) if d.is_dir() else set()
        try:
            summary = run_pipeline(cell.config, d, log=pipeline_log or (lambda s: None), reuse_from=donors)
        except Exception as e:  # one failing cell (an infeasible selector, say) must not stop the others
            if isinstance(e, KeyboardInterrupt):
                raise
            failed[cell.name] = f"{type(e).__name__}: {e}"
            log(f"{head}: FAILED after {time.time() - t0:.0f}s: {failed[cell.name]}")
            state["cells"][cell.name] = {"status": "failed", "error": failed[cell.name]}
            _write_state(sweep, state)
            continue
        stages = summary.get("stages", {})
        reused_dirs = [Path(stages[s]["reused_from"]) for s in ("cpt", "merge")
                       if s not in before and stages.get(s, {}).get("reused_from")]
        reused = reused_dirs[0].parent.name if reused_dirs else ""
        saved = sum(float(stages[s].get("seconds") or 0.0) for s in ("cpt", "merge") if reused and s not in before)
        ran = [s for s in rundir.STAGES if s not in before and not (reused and s in ("cpt", "merge"))]
        seconds = time.time() - t0
        what = f"ran {', '.join(ran) or 'nothing (all stages were done)'}"
        if reused:
            what = f"reused cpt+merged of {reused} (saved {saved:.0f}s), " + what
        elif before:
            what = f"resumed ({', '.join(sorted(before))} done), " + what
        log(f"{head}: {what} ({seconds:.0f}s)")
        state["cells"][cell.name] = {"status": "finished", "ran": ran, "seconds": round(seconds, 1),
                                     "reused_cpt_from": reused or None, "saved_seconds": round(saved, 1)}
        _write_state(sweep, state)
    wall = time.time() - t_sweep
    state["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_sweep)),
                          "cells": len(cells), "wall_seconds": round(wall, 1), "only": only,
                          "failed": sorted(failed)})
    _write_state(sweep, state)
    table = collect(sweep)
    table.attrs["failed"] = sorted(failed)
    log(f"sweep: {len(cells)} cells in {wall:.0f}s; {len(table)} finished cells in {sweep.out / RESULTS}"
        + (f"; {len(failed)} failed: {', '.join(sorted(failed))}" if failed else ""))
    return table


def _read_state(out: Path) -> dict:
    f = out / SWEEP_JSON
    state = json.loads(f.read_text()) if f.is_file() else {}
    state.setdefault("cells", {})
    state.setdefault("runs", [])
    return state


def _write_state(sweep: Sweep, state: dict) -> None:
    state["source"] = sweep.source
    state["overrides"] = sweep.overrides
    f = sweep.out / SWEEP_JSON
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False, default=str))
    os.replace(tmp, f)


# -- the results table -------------------------------------------------------------------------------------------


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
        row = {"cell": cell.name, **cell.columns, **flatten(summary), **item_counts(d),
               "reused_cpt_from": info.get("reused_cpt_from") or "",
               "cell_seconds": info.get("seconds", math.nan)}
        row.update(read_outcomes(summary, DIFFERENCES))
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table.to_csv(sweep.out / RESULTS, index=False)
        write_figures(sweep, table, [sweep.out, sweep.figures])
    return table


def write_figures(sweep: Sweep, table: pd.DataFrame, folders: list[Path]) -> None:
    """The interval tables (ci.csv, paired.csv) into each of ``folders`` and the figures into ``sweep.figures``;
    the figure folder is what a study commits, so results.csv goes beside the figures too."""
    if not sweep.plot:
        return
    folders = list(dict.fromkeys([*folders, sweep.figures]))
    cis = plot_sweep(table, sweep.plot, sweep.axes, sweep.figures)
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
        raise FileNotFoundError(f"no {src}: expected the sweep's committed results table there; run the sweep "
                                f"(`layerprobe sweep {sweep.source or 'SWEEP.yaml'}`) or --collect first")
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
    from layerprobe.stats import t_mean_ci, wilson

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
        elif len(values) == 1 and f"{metric}.n" in g and g[f"{metric}.n"].notna().all() and g[f"{metric}.n"].iloc[0] > 0:
            n = int(g[f"{metric}.n"].iloc[0])
            row["lo"], row["hi"] = wilson(round(values[0] * n), n)
            row["ci"] = f"Wilson (n={n})"
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(table: pd.DataFrame, metrics: list[str], baseline: str, keys: list[str]) -> pd.DataFrame:
    """Each condition minus ``baseline`` on the cells that share ``keys`` (seed and grid values), per metric: the
    mean difference with a t interval and a paired t-test's p-value. Columns: condition, metric, baseline_mean,
    mean, n_pairs, mean_diff, lo, hi, p."""
    from layerprobe.stats import paired_t

    base = table[table["condition"] == baseline].set_index(keys)
    rows = []
    for cond in dict.fromkeys(table["condition"]):
        if cond == baseline:
            continue
        other = table[table["condition"] == cond].set_index(keys)
        shared = other.index.intersection(base.index)
        for m in metrics:
            pairs = pd.DataFrame({"b": base.loc[shared, m], "t": other.loc[shared, m]}).dropna()
            if pairs.empty:
                continue
            rows.append({"condition": cond, "metric": m, "baseline_mean": float(pairs["b"].mean()),
                         "mean": float(pairs["t"].mean()), **paired_t((pairs["t"] - pairs["b"]).to_numpy())})
    return pd.DataFrame(rows)


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


# -- figures -----------------------------------------------------------------------------------------------------


def _panels(plot: list) -> list[list[str]]:
    out = []
    for p in plot:
        metrics = [p] if isinstance(p, str) else list(p) if isinstance(p, (list, tuple)) else None
        if not metrics or not all(isinstance(m, str) for m in metrics):
            raise ValueError(f"each plot entry must be a metric name or a list of them, got {p!r}")
        out.append(metrics)
    return out


def plot_sweep(table: pd.DataFrame, plot: list, axes: list[str], out_dir: str | os.PathLike) -> pd.DataFrame:
    """One figure per panel: the mean of each metric per condition with its 95 % interval (see :func:`summarize`),
    the design's factors as facets (drawn by :func:`layerprobe.plot.study.sweep_panel`).

    Returns the table of means and intervals of every plotted metric (what ci.csv holds).
    """
    from layerprobe.plot.study import sweep_panel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
