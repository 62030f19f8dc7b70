"""One sweep cell as a job: what every executor runs, in this process or a fresh one.

:func:`run_cell` runs the pipeline in the cell's run folder and returns what happened as a record (the entry
sweep.json keeps, plus a line for the log); a failing cell returns a failed record instead of raising. In a fresh
process (a local worker, a Ray task, a Slurm job) it first sets the torch thread count, before torch loads, and
the working directory the sweep was started from, so relative paths in the config mean what they meant there.
``python -m layerprobe.sweep.worker JOB.json RESULT.json`` is the local workers' entry point.
Never imports torch at module level.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from layerprobe.core import rundir
from layerprobe.core.config import resolve, wait_passively
from layerprobe.train.pipeline import run_pipeline

# set to a cell's thread count before torch loads; the last tells the pipeline the count is the executor's assignment
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LAYERPROBE_ASSIGNED_THREADS")


@dataclass
class CellJob:
    """Everything a worker needs to run one cell (plain data: it travels as JSON or a pickle)."""

    name: str
    config: dict  # the cell's resolved TrainConfig as a dict (TrainConfig.to_dict)
    run_dir: str
    donors: list[str] = field(default_factory=list)  # folders whose finished CPT with equal fingerprints is reused
    threads: int | None = None  # torch threads, set before torch loads; None: the pipeline's choice
    cwd: str | None = None  # the sweep's working directory (relative paths); None: this process's
    log: str | None = None  # file the pipeline's lines go to (fresh processes); None: the caller's log function
    echo: bool = False  # also print the pipeline's lines (--verbose)

    @classmethod
    def read(cls, path: str | os.PathLike) -> CellJob:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    def write(self, path: str | os.PathLike) -> Path:
        return rundir.write_text(path, json.dumps(asdict(self), ensure_ascii=False, default=str))


def _set_threads(threads: int) -> None:
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:  # (an in-process or reused worker: the variable came too late)
        sys.modules["torch"].set_num_threads(threads)


def run_cell(job: CellJob, pipeline_log=None) -> dict:
    """Run one cell's pipeline; returns its record: ``status`` ('finished', 'failed' or 'busy': another process
    holds the folder), and for a finished cell ``ran``, ``seconds``, ``reused_cpt_from``, ``saved_seconds``, and
    ``what`` (the log line's text)."""
    wait_passively()  # a fresh process: before torch loads
    if job.threads:
        _set_threads(job.threads)
    if job.cwd and Path(job.cwd).is_dir():
        os.chdir(job.cwd)
    log_file = open(job.log, "a", encoding="utf-8") if job.log else None

    def log(line: str) -> None:
        if log_file:
            log_file.write(line + "\n")
            log_file.flush()
        if job.echo:
            print(f"      [{job.name}] {line}", flush=True)
        if pipeline_log:
            pipeline_log(line)

    try:
        return _run(job, log)
    finally:
        if log_file:
            log_file.close()


def _run(job: CellJob, log) -> dict:
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    d = Path(job.run_dir)
    before = rundir.done_stages(d) if d.is_dir() else set()
    t0 = time.time()
    try:
        summary = run_pipeline(resolve(job.config), d, log=log, reuse_from=[Path(p) for p in job.donors])
    except rundir.RunFolderBusy as e:
        return {"status": "busy", "error": str(e)}
    except Exception as e:  # one failing cell (an infeasible selector, say) must not stop the others
        error = f"{type(e).__name__}: {e}"
        log(f"FAILED: {error}")
        return {"status": "failed", "error": error, "seconds": round(time.time() - t0, 1)}
    stages = summary.get("stages", {})
    reused_dirs = [
        Path(stages[s]["reused_from"])
        for s in ("cpt", "merge")
        if s not in before and stages.get(s, {}).get("reused_from")
    ]
    reused = reused_dirs[0].parent.name if reused_dirs else ""
    saved = sum(float(stages[s].get("seconds") or 0.0) for s in ("cpt", "merge") if reused and s not in before)
    ran = [s for s in rundir.STAGES if s not in before and not (reused and s in ("cpt", "merge"))]
    what = f"ran {', '.join(ran) or 'nothing (all stages were done)'}"
    if reused:
        what = f"reused cpt+merged of {reused} (saved {saved:.0f}s), " + what
    elif before:
        what = f"resumed ({', '.join(sorted(before))} done), " + what
    return {
        "status": "finished",
        "ran": ran,
        "seconds": round(time.time() - t0, 1),
        "reused_cpt_from": reused or None,
        "saved_seconds": round(saved, 1),
        "what": what,
    }
