"""Running a sweep's cells: each a run folder, resumable, reusing finished CPTs, on any executor.

:func:`run_sweep` follows one plan (:mod:`layerprobe.sweep.plan`: a group's CPT is trained by one cell, the others
wait for it) whatever the executor (:mod:`layerprobe.sweep.executors`: where a cell runs). It alone writes
sweep.json, as each cell ends, and results.csv at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pandas as pd

from layerprobe.sweep.cell import CellJob
from layerprobe.sweep.executors import SCRATCH, ExecutorConfig, make_executor
from layerprobe.sweep.plan import make_plan
from layerprobe.sweep.results import collect
from layerprobe.sweep.spec import RESULTS, Sweep, _read_state, _write_state, select_cells


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def run_sweep(
    sweep: Sweep,
    only: str | None = None,
    log: Callable[[str], None] = print,
    pipeline_log: Callable[[str], None] | None = None,
    reuse: bool = True,
    executor: ExecutorConfig | None = None,
    progress_every: float = 60.0,
) -> pd.DataFrame:
    """Run every cell not yet finished, then write results.csv, figures and sweep.json; returns the table.

    ``executor``: where the cells run (default: the sweep's ``executor:``, else one after another in this process).
    A failed cell (an error, or its worker killed) is reported and the others go on; the table's
    ``attrs["failed"]`` names them. ``progress_every``: seconds between progress lines while cells run.
    """
    config = executor or sweep.executor
    cells = select_cells(sweep, only)
    by_name = {c.name: c for c in cells}
    index = {c.name: i for i, c in enumerate(cells, 1)}
    n = len(cells)
    plan = make_plan(cells, sweep.out, reuse)
    pending = [c.name for c in cells if c.name not in plan.finished]
    ex = make_executor(config, sweep.out, len(pending), pipeline_log)  # bad input fails here, before any work
    sweep.out.mkdir(parents=True, exist_ok=True)
    state = _read_state(sweep.out)
    t_sweep = time.time()
    failed: dict[str, str] = {}
    busy: list[str] = []
    finished = len(plan.finished)
    running: dict[str, tuple[object, float]] = {}  # cell -> (handle, start time)
    last_line = time.time()

    def say(line: str) -> None:
        nonlocal last_line
        last_line = time.time()
        log(line)

    def progress() -> str:
        return (
            f"{finished}/{n} done, {len(running)} running, {len(failed)} failed, "
            f"{_clock(time.time() - t_sweep)} elapsed"
        )

    def job(name: str) -> CellJob:
        donors = [str(p) for p in plan.donors(name, sweep.reuse_from)] if reuse else []
        log_file = str(sweep.out / SCRATCH / f"{name}.log") if ex.fresh else None
        return CellJob(
            name,
            by_name[name].config.to_dict(),
            str(sweep.out / name),
            donors,
            ex.threads,
            os.getcwd() if ex.fresh else None,
            log_file,
            ex.fresh and pipeline_log is not None,
        )

    for c in cells:
        if c.name in plan.finished:
            say(f"[{index[c.name]}/{n}] {c.name}: finished, skipped")
    try:
        if pending:
            if ex.fresh:
                (sweep.out / SCRATCH).mkdir(exist_ok=True)
            where = ex.start()
            if ex.fresh:
                say(f"plan: {plan.summary(pending)}; {where}")
        while pending or running:
            batch: list[str] = []
            while len(running) + len(batch) < ex.slots:
                name = plan.next(pending, set(running) | set(batch))
                if name is None:
                    break
                pending.remove(name)
                batch.append(name)
            if batch:
                roles = {name: plan.role(name, [*batch, *pending]) for name in batch}
                for name, handle in zip(batch, ex.submit([job(name) for name in batch])):
                    running[name] = (handle, time.time())
                    if ex.fresh:
                        say(f"[{index[name]}/{n}] {name}: started ({ex.where(handle)}; {roles[name]})")
            ended = ex.wait([h for h, _ in running.values()], max(1.0, progress_every - (time.time() - last_line)))
            for handle in ended:
                name = next(nm for nm, (h, _) in running.items() if h is handle or h == handle)
                t0 = running[name][1]
                record = dict(ex.result(handle))
                del running[name]
                status = record.pop("status")
                seconds = record.get("seconds") or time.time() - t0
                head = f"[{index[name]}/{n}] {name}"
                if status == "busy":  # another process runs this cell: leave it and its state alone
                    busy.append(name)
                    say(f"{head}: skipped, {record['error']}")
                    continue
                if status == "finished":
                    finished += 1
                    plan.done(name, True)
                    what = record.pop("what")
                    state["cells"][name] = {"status": "finished", **record}
                    say(f"{head}: {what} ({seconds:.0f}s)  [{progress()}]")
                else:
                    plan.done(name, False)
                    failed[name] = record["error"]
                    state["cells"][name] = {"status": "failed", "error": failed[name]}
                    say(f"{head}: FAILED after {seconds:.0f}s: {failed[name]}  [{progress()}]")
                _write_state(sweep, state)
            if not ended and running and time.time() - last_line >= progress_every:
                now = time.time()
                say(
                    f"sweep: {progress()}; running: "
                    + ", ".join(f"{name} ({_clock(now - t0)})" for name, (_, t0) in running.items())
                )
    finally:
        ex.close()
    wall = time.time() - t_sweep
    state["runs"].append(
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_sweep)),
            "cells": n,
            "wall_seconds": round(wall, 1),
            "only": only,
            "executor": config.describe(),
            "failed": sorted(failed),
        }
    )
    _write_state(sweep, state)
    table = collect(sweep)
    table.attrs["failed"] = sorted(failed)
    table.attrs["busy"] = sorted(busy)
    say(
        f"sweep: {n} cells in {wall:.0f}s; {len(table)} finished cells in {sweep.out / RESULTS}"
        + (f"; {len(failed)} failed: {', '.join(sorted(failed))}" if failed else "")
        + (f"; {len(busy)} in use by another process: {', '.join(busy)}" if busy else "")
    )
    return table
