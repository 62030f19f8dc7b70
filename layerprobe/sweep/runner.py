"""Running a sweep's cells: each a run folder, resumable, reusing finished CPTs, on any executor.

:func:`run_sweep` follows one plan (:mod:`layerprobe.sweep.plan`: a group's CPT is trained by one cell, the others
wait for it) whatever the executor (:mod:`layerprobe.sweep.executors`: where a cell runs). It alone writes
sweep.json, as each cell ends, and results.csv at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from layerprobe.sweep.cell import CellJob
from layerprobe.sweep.cluster_executors import RayExecutor, SlurmExecutor
from layerprobe.sweep.executors import SCRATCH, Executor, ExecutorConfig, InlineExecutor
from layerprobe.sweep.local_executor import LocalExecutor
from layerprobe.sweep.plan import make_plan
from layerprobe.sweep.results import collect
from layerprobe.sweep.spec import RESULTS, Sweep, _read_state, _write_state, select_cells


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def make_executor(config: ExecutorConfig, out: Path, cells: int, pipeline_log=None) -> Executor:
    """The executor ``config`` names, its inputs checked (extras installed, GPUs there); nothing started yet."""
    scratch = Path(out) / SCRATCH
    verbose = pipeline_log is not None
    if config.name == "local" and (config.workers or 1) == 1 and not config.cell_gpus and not config.cell_cpus:
        return InlineExecutor(pipeline_log)
    if config.name == "local":
        return LocalExecutor(config, scratch)
    if config.name == "ray":
        return RayExecutor(config, cells, verbose)
    return SlurmExecutor(config, cells, scratch)


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
    run = _SweepRun(sweep, select_cells(sweep, only), config, reuse, pipeline_log, log)
    try:
        run.start()
        while run.pending or run.running:
            run.submit_ready()
            wait = max(1.0, progress_every - (time.time() - run.last_line))
            ended = run.ex.wait([h for h, _ in run.running.values()], wait)
            for handle in ended:
                run.ended(handle)
            if not ended and run.running and time.time() - run.last_line >= progress_every:
                now = time.time()
                run.say(
                    f"sweep: {run.progress()}; running: "
                    + ", ".join(f"{name} ({_clock(now - t0)})" for name, (_, t0) in run.running.items())
                )
    finally:
        run.ex.close()
    return run.finish(only, config)


class _SweepRun:
    """One call of :func:`run_sweep`: the plan, the executor, the cells pending / running / failed, sweep.json."""

    def __init__(self, sweep: Sweep, cells: list, config: ExecutorConfig, reuse: bool, pipeline_log, log):
        self.sweep, self.reuse, self.pipeline_log, self.log = sweep, reuse, pipeline_log, log
        self.by_name = {c.name: c for c in cells}
        self.index = {c.name: i for i, c in enumerate(cells, 1)}
        self.n = len(cells)
        self.plan = make_plan(cells, sweep.out, reuse, sweep.reuse_from)
        self.pending = [c.name for c in cells if c.name not in self.plan.finished]
        # bad input fails here, before any work
        self.ex = make_executor(config, sweep.out, len(self.pending), pipeline_log)
        sweep.out.mkdir(parents=True, exist_ok=True)
        self.state = _read_state(sweep.out)
        self.t_sweep = self.last_line = time.time()
        self.failed: dict[str, str] = {}
        self.busy: list[str] = []
        self.finished = len(self.plan.finished)
        self.running: dict[str, tuple[object, float]] = {}  # cell -> (handle, start time)
        for c in cells:
            if c.name in self.plan.finished:
                self.say(f"[{self.index[c.name]}/{self.n}] {c.name}: finished, skipped")

    def say(self, line: str) -> None:
        self.last_line = time.time()
        self.log(line)

    def progress(self) -> str:
        return (
            f"{self.finished}/{self.n} done, {len(self.running)} running, {len(self.failed)} failed, "
            f"{_clock(time.time() - self.t_sweep)} elapsed"
        )

    def start(self) -> None:
        if not self.pending:
            return
        if self.ex.fresh:
            (self.sweep.out / SCRATCH).mkdir(exist_ok=True)
        where = self.ex.start()
        if self.ex.fresh:
            self.say(f"plan: {self.plan.summary(self.pending)}; {where}")

    def job(self, name: str) -> CellJob:
        sweep, ex = self.sweep, self.ex
        donors = [str(p) for p in self.plan.donors(name, sweep.reuse_from)] if self.reuse else []
        log_file = str(sweep.out / SCRATCH / f"{name}.log") if ex.fresh else None
        return CellJob(
            name,
            self.by_name[name].config.to_dict(),
            str(sweep.out / name),
            donors,
            ex.threads,
            os.getcwd() if ex.fresh else None,
            log_file,
            ex.fresh and self.pipeline_log is not None,
        )

    def submit_ready(self) -> None:
        """Start the cells the plan allows now, as far as the executor has free slots."""
        batch: list[str] = []
        while len(self.running) + len(batch) < self.ex.slots:
            name = self.plan.next(self.pending, set(self.running) | set(batch))
            if name is None:
                break
            self.pending.remove(name)
            batch.append(name)
        if not batch:
            return
        roles = {name: self.plan.role(name, [*batch, *self.pending]) for name in batch}
        for name, handle in zip(batch, self.ex.submit([self.job(name) for name in batch])):
            self.running[name] = (handle, time.time())
            if self.ex.fresh:
                self.say(f"[{self.index[name]}/{self.n}] {name}: started ({self.ex.where(handle)}; {roles[name]})")

    def ended(self, handle) -> None:
        """A cell came back: finished, failed, or left to another process; sweep.json is written each time."""
        name = next(nm for nm, (h, _) in self.running.items() if h is handle or h == handle)
        t0 = self.running[name][1]
        record = dict(self.ex.result(handle))
        del self.running[name]
        status = record.pop("status")
        seconds = record.get("seconds") or time.time() - t0
        head = f"[{self.index[name]}/{self.n}] {name}"
        if status == "busy":  # another process runs this cell: leave it and its state alone
            self.busy.append(name)
            self.say(f"{head}: skipped, {record['error']}")
            return
        if status == "finished":
            self.finished += 1
            self.plan.done(name, True)
            what = record.pop("what")
            self.state["cells"][name] = {"status": "finished", **record}
            self.say(f"{head}: {what} ({seconds:.0f}s)  [{self.progress()}]")
        else:
            self.plan.done(name, False)
            self.failed[name] = record["error"]
            self.state["cells"][name] = {"status": "failed", "error": self.failed[name]}
            self.say(f"{head}: FAILED after {seconds:.0f}s: {self.failed[name]}  [{self.progress()}]")
        _write_state(self.sweep, self.state)

    def finish(self, only: str | None, config: ExecutorConfig) -> pd.DataFrame:
        """sweep.json's record of this call, then results.csv and the figures (:func:`collect`)."""
        sweep, failed, busy = self.sweep, self.failed, self.busy
        wall = time.time() - self.t_sweep
        self.state["runs"].append(
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.t_sweep)),
                "cells": self.n,
                "wall_seconds": round(wall, 1),
                "only": only,
                "executor": config.describe(),
                "failed": sorted(failed),
            }
        )
        _write_state(sweep, self.state)
        table = collect(sweep)
        table.attrs["failed"] = sorted(failed)
        table.attrs["busy"] = sorted(busy)
        self.say(
            f"sweep: {self.n} cells in {wall:.0f}s; {len(table)} finished cells in {sweep.out / RESULTS}"
            + (f"; {len(failed)} failed: {', '.join(sorted(failed))}" if failed else "")
            + (f"; {len(busy)} in use by another process: {', '.join(busy)}" if busy else "")
        )
        return table
