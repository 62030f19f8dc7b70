"""Running a sweep's cells: each a run folder, resumable, reusing finished CPTs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pandas as pd

from layerprobe import rundir
from layerprobe.rundir import SUMMARY
from layerprobe.sweep.results import collect
from layerprobe.sweep.spec import RESULTS, Sweep, _read_state, _write_state, select_cells


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
