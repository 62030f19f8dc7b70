"""Where a sweep's cells run: this machine, a Ray cluster or Slurm. Executors only place cells; the plan
(:mod:`layerprobe.sweep.plan`) says which cells may start, and :func:`layerprobe.sweep.runner.run_sweep` drives both.

- ``local`` (default, no extra dependency): one worker runs the cells one after another in this process, as
  ``layerprobe sweep`` always did; ``workers: N`` runs N cells at once, each in a fresh process
  (``python -m layerprobe.sweep.worker``) with cores // N torch threads, or one GPU each when there are GPUs.
- ``ray`` (``pip install 'layerprobe[ray]'``): each cell a Ray task with ``cell_cpus`` CPUs and ``cell_gpus``
  GPUs, in a fresh worker process (``max_calls=1``); ``address: auto`` joins a running cluster, none starts a
  local one (an already initialised Ray is used as it is).
- ``slurm`` (``pip install 'layerprobe[slurm]'``, submitit): one Slurm job per cell (cells ready together are one job
  array) with ``partition``, ``time`` (minutes), ``cell_cpus`` and ``cell_gpus``; ``slurm_cluster: local`` runs
  the jobs through submitit's local executor on this machine (how it is tested without Slurm).

A cell that crashes or is killed (SIGKILL, out of memory) is a failed cell, reported like any other failure;
the others go on. This module holds the executors' config, their interface and the inline executor; the local
workers are in :mod:`layerprobe.sweep.local_executor`, Ray and Slurm in :mod:`layerprobe.sweep.cluster_executors`
(Ray and submitit are imported only there, inside their executor), and
:func:`layerprobe.sweep.runner.make_executor` picks one. Never imports torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from layerprobe.sweep.cell import CellJob, run_cell

EXECUTORS = ("local", "ray", "slurm")
SCRATCH = ".cells"  # <sweep>/.cells/: each cell's log (and a local worker's job and result files)
_EXTRAS = {"ray": "ray", "slurm": "submitit"}


class MissingExtra(ImportError, ValueError):
    """An executor's optional dependency is not installed (a ValueError too: the CLI prints it on one line)."""


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class ExecutorConfig:
    """Where a sweep's cells run (``executor:`` in the sweep YAML: a name or a mapping of these fields)."""

    name: str = _help(
        "'local' (this machine), 'ray' (a Ray cluster) or 'slurm' (a Slurm job per cell)", default="local"
    )
    workers: int | None = _help(
        "cells at once. local: worker processes (none or 1: one after another in this "
        "process); ray, slurm: cells in flight at most (none: as many as are ready)",
        default=None,
    )
    cell_cpus: int | None = _help(
        "CPU cores per cell, also its torch threads. Default: local cores // workers; "
        "ray the cluster's CPUs // workers (1 without workers); slurm 1",
        default=None,
    )
    cell_gpus: int = _help("GPUs per cell (ray, slurm). local gives each worker one GPU when there are GPUs", default=0)
    address: str | None = _help(
        "ray: the cluster to join ('auto': the one running on this machine, or "
        "ray://HOST:10001); none: start a local one",
        default=None,
    )
    partition: str | None = _help("slurm: the partition the jobs go to (none: the cluster's default)", default=None)
    time: int = _help("slurm: minutes a cell's job may run", default=120)
    slurm_cluster: str = _help(
        "slurm: 'slurm' (sbatch) or 'local' (submitit's local executor on this machine)", default="slurm"
    )

    def __post_init__(self):
        if self.name not in EXECUTORS:
            raise ValueError(f"unknown executor {self.name!r}; expected one of {', '.join(EXECUTORS)}")
        for what, value in (("workers", self.workers), ("cell_cpus", self.cell_cpus)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{what.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if not isinstance(self.cell_gpus, int) or self.cell_gpus < 0:
            raise ValueError(f"cell-gpus must be an integer >= 0, got {self.cell_gpus!r}")
        if not isinstance(self.time, int) or self.time < 1:
            raise ValueError(f"time must be a whole number of minutes >= 1, got {self.time!r}")
        if self.slurm_cluster not in ("slurm", "local"):
            raise ValueError(f"slurm_cluster must be 'slurm' or 'local', got {self.slurm_cluster!r}")
        only = {"address": "ray", "partition": "slurm"}
        for key, owner in only.items():
            if getattr(self, key) is not None and self.name != owner:
                raise ValueError(
                    f"{key} applies to the {owner} executor only, got {key}={getattr(self, key)!r} "
                    f"with executor {self.name!r}"
                )
        if self.name == "local" and self.cell_gpus > 1:
            raise ValueError(
                f"the local executor gives each worker one GPU, got cell-gpus={self.cell_gpus}; use "
                "the ray or slurm executor for several GPUs per cell"
            )

    @classmethod
    def from_yaml(cls, raw) -> ExecutorConfig:
        """``executor:`` of a sweep YAML: a name (``ray``) or a mapping (``{name: ray, workers: 4}``)."""
        if raw is None:
            return cls()
        if isinstance(raw, str):
            return cls(name=raw)
        if not isinstance(raw, dict):
            raise ValueError(
                f"executor must be a name ({', '.join(EXECUTORS)}) or a mapping such as "
                f"{{name: ray, workers: 4}}, got {raw!r}"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"unknown executor key {unknown[0]!r}; valid keys: {', '.join(known)}")
        return cls(**raw)

    def describe(self) -> str:
        if self.name == "local":
            return f"local, {self.workers or 1} worker{'s' if (self.workers or 1) > 1 else ''}"
        return self.name + (f", {self.workers} cells at once" if self.workers else "")


def visible_gpus() -> list[str]:
    """The GPUs this machine shows (CUDA_VISIBLE_DEVICES, else nvidia-smi), without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(x for x in out.splitlines() if x.startswith("GPU"))]


def require_extra(name: str):
    """The module of executor ``name``'s optional dependency, or a one-line error saying how to install it."""
    import importlib

    module = _EXTRAS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"the {name} executor needs {module}, which is not installed; install it with "
            f"pip install 'layerprobe[{name}]'"
        ) from None


def no_gpus(cell_gpus: int, where: str) -> ValueError:
    """The error for cells that ask for GPUs where there are none."""
    return ValueError(
        f"cell-gpus={cell_gpus} but {where} has no GPUs; leave --cell-gpus out (0) or run where there are GPUs"
    )


class Executor:
    """Runs cell jobs somewhere: ``submit`` starts them, ``wait`` returns those that ended, ``result`` their
    records. ``slots``: cells at once; ``fresh``: each cell runs in a new process (it gets the sweep's working
    directory, a log file and a thread count)."""

    slots: int = 1
    fresh: bool = True
    threads: int | None = None

    def start(self) -> str:
        """Connect or start what is needed; returns a line for the log."""
        return ""

    def submit(self, jobs: list[CellJob]) -> list[Any]:
        raise NotImplementedError

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        raise NotImplementedError

    def result(self, handle) -> dict:
        raise NotImplementedError

    def where(self, handle) -> str:
        return ""

    def close(self) -> None:
        """Stop what still runs (after an interrupt) and let go of the cluster."""


def failed_result(error: str) -> dict:
    """The result of a cell that ended without one of its own."""
    return {"status": "failed", "error": error}


def poll(done: Callable[[Any], bool], handles: list, timeout: float, every: float) -> list:
    """The handles that ``done`` says ended, checked every ``every`` seconds until one has or ``timeout`` passed."""
    end = time.time() + timeout
    while True:
        ended = [h for h in handles if done(h)]
        if ended or time.time() >= end:
            return ended
        time.sleep(min(every, max(0.0, end - time.time())))


class InlineExecutor(Executor):
    """One cell after another in this process (local with one worker). The thread count is the pipeline's choice
    (:func:`layerprobe.train.threads.choose_threads`) made once, before the first cell, and kept for the sweep: one
    sweep's cells run alike (the thread count moves numbers under bf16)."""

    fresh = False

    def __init__(self, pipeline_log=None):
        self.pipeline_log = pipeline_log
        self.threads: int | None = None

    def submit(self, jobs):
        if self.threads is None:
            import torch

            from layerprobe.train.threads import choose_threads

            choose_threads()
            self.threads = torch.get_num_threads()
        return [(job, run_cell(replace(job, threads=job.threads or self.threads), self.pipeline_log)) for job in jobs]

    def wait(self, handles, timeout):
        return list(handles)

    def result(self, handle):
        return handle[1]
