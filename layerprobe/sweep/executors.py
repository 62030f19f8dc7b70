"""Where a sweep's cells run: this machine, a Ray cluster or Slurm. Executors only place cells; the plan
(:mod:`layerprobe.sweep.plan`) says which cells may start, and :func:`layerprobe.sweep.runner.run_sweep` drives both.

- ``local`` (default, no extra dependency): one worker runs the cells one after another in this process, as
  ``layerprobe sweep`` always did; ``workers: N`` runs N cells at once, each in a fresh process
  (``python -m layerprobe.sweep.cell``) with cores // N torch threads, or one GPU each when there are GPUs.
- ``ray`` (``pip install 'layerprobe[ray]'``): each cell a Ray task with ``cell_cpus`` CPUs and ``cell_gpus``
  GPUs, in a fresh worker process (``max_calls=1``); ``address: auto`` joins a running cluster, none starts a
  local one (an already initialised Ray is used as it is).
- ``slurm`` (``pip install 'layerprobe[slurm]'``, submitit): one Slurm job per cell (cells ready together are one job
  array) with ``partition``, ``time`` (minutes), ``cell_cpus`` and ``cell_gpus``; ``slurm_cluster: local`` runs
  the jobs through submitit's local executor on this machine (how it is tested without Slurm).

A cell that crashes or is killed (SIGKILL, out of memory) is a failed cell, reported like any other failure;
the others go on. Ray and submitit are imported only here, inside their executor. Never imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from layerprobe.sweep.cell import THREAD_VARS, CellJob, run_cell

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


def _require(name: str):
    import importlib

    module = _EXTRAS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"the {name} executor needs {module}, which is not installed; install it with "
            f"pip install 'layerprobe[{name}]'"
        ) from None


def _no_gpus(cell_gpus: int, where: str) -> ValueError:
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


def _failed(error: str) -> dict:
    return {"status": "failed", "error": error}


def _poll(done: Callable[[Any], bool], handles: list, timeout: float, every: float) -> list:
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


@dataclass
class _Worker:
    job: CellJob
    process: subprocess.Popen
    result: Path
    slot: int


class LocalExecutor(Executor):
    """N cells at once on this machine, each in a fresh process with cores // N threads (or one GPU each)."""

    def __init__(self, config: ExecutorConfig, scratch: Path):
        self.slots = config.workers or 1
        self.threads = config.cell_cpus or max(1, (os.cpu_count() or 1) // self.slots)
        self.gpus = visible_gpus()
        if config.cell_gpus and not self.gpus:
            raise _no_gpus(config.cell_gpus, "this machine")
        self.scratch = scratch
        self.free = list(range(self.slots))
        self.running: list[_Worker] = []

    def start(self):
        gpus = (
            f", GPU {', '.join(self.gpus)} one per worker"
            if len(self.gpus) >= self.slots
            else f", {len(self.gpus)} GPU(s) shared by {self.slots} workers"
            if self.gpus
            else ""
        )
        return (
            f"local: {self.slots} worker processes, {self.threads} torch thread{'s' if self.threads > 1 else ''}"
            f" each{gpus}"
        )

    def submit(self, jobs):
        out = []
        for job in jobs:
            slot = self.free.pop(0)
            base = self.scratch / job.name
            result = Path(f"{base}.result.json")
            result.unlink(missing_ok=True)
            job_file = job.write(f"{base}.job.json")
            env = dict(os.environ, **{v: str(self.threads) for v in THREAD_VARS})
            if self.gpus:
                env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
            with open(job.log, "a", encoding="utf-8") as log:  # the child's own output (warnings, a traceback)
                process = subprocess.Popen(
                    [sys.executable, "-m", "layerprobe.sweep.cell", str(job_file), str(result)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stderr=log,
                    stdout=None if job.echo else log,
                )
            out.append(_Worker(job, process, result, slot))
        self.running += out
        return out

    def wait(self, handles, timeout):
        return _poll(lambda w: w.process.poll() is not None, handles, timeout, 0.2)

    def result(self, w: _Worker):
        self.running.remove(w)
        self.free.append(w.slot)
        self.free.sort()
        code = w.process.wait()
        if w.result.is_file():
            return json.loads(w.result.read_text(encoding="utf-8"))
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code < 0 and -code in signal.valid_signals()
            else f"exit code {code}"
        )
        return _failed(f"worker process {w.process.pid} ended without a result ({how}); its log: {w.job.log}")

    def where(self, w):
        gpu = f", GPU {self.gpus[w.slot % len(self.gpus)]}" if self.gpus else ""
        return f"worker {w.slot + 1}, pid {w.process.pid}{gpu}"

    def close(self):
        for w in self.running:
            if w.process.poll() is None:
                w.process.terminate()
        for w in self.running:
            try:
                w.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.process.kill()


class RayExecutor(Executor):
    """Each cell a Ray task with its CPUs and GPUs, in a fresh worker process."""

    def __init__(self, config: ExecutorConfig, cells: int, verbose: bool = False):
        self.ray = _require("ray")
        self.config = config
        self.cells = cells
        self.verbose = verbose
        self.owns = False

    def start(self):
        ray, cfg = self.ray, self.config
        if not ray.is_initialized():
            ray.init(
                address=cfg.address,
                include_dashboard=False,
                log_to_driver=self.verbose,
                configure_logging=True,
                logging_level="warning",
            )
            self.owns = True
        res = ray.cluster_resources()
        cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
        if cfg.cell_gpus > gpus:
            self.close()
            raise (
                _no_gpus(cfg.cell_gpus, "the Ray cluster")
                if not gpus
                else ValueError(
                    f"cell-gpus={cfg.cell_gpus} but the Ray cluster has {gpus:g} GPUs in all; ask for at most that many"
                )
            )
        self.threads = cfg.cell_cpus or (max(1, int(cpus // cfg.workers)) if cfg.workers else 1)
        if self.threads > cpus:
            self.close()
            raise ValueError(
                f"cell-cpus={self.threads} but the Ray cluster has {cpus:g} CPUs in all; ask for at most that many"
            )
        self.slots = cfg.workers or self.cells
        self.remote = ray.remote(num_cpus=self.threads, num_gpus=cfg.cell_gpus, max_calls=1, max_retries=0)(run_cell)
        self.refs: dict = {}
        where = (
            "joined the cluster at " + cfg.address
            if cfg.address
            else ("started a local cluster" if self.owns else "the running Ray")
        )
        return (
            f"ray: {where} ({cpus:g} CPUs, {gpus:g} GPUs); each cell a task with {self.threads} CPU(s)"
            f"{f', {cfg.cell_gpus} GPU(s)' if cfg.cell_gpus else ''}, {self.slots} at most at once"
        )

    def submit(self, jobs):
        refs = [self.remote.remote(job) for job in jobs]
        self.refs.update(dict(zip(refs, jobs)))
        return refs

    def wait(self, handles, timeout):
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:  # whatever else ended meanwhile, too
            ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def result(self, ref):
        self.refs.pop(ref, None)
        try:
            return self.ray.get(ref)
        except Exception as e:  # the worker died (killed, out of memory) or the task could not run
            return _failed(f"ray task failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")

    def where(self, ref):
        return "ray task"

    def close(self):
        for ref in list(getattr(self, "refs", {})):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # already ended
                pass
        if self.owns:
            self.ray.shutdown()
            self.owns = False


class SlurmExecutor(Executor):
    """One Slurm job per cell through submitit (cells ready at the same time go as one job array)."""

    def __init__(self, config: ExecutorConfig, cells: int, scratch: Path):
        self.submitit = _require("slurm")
        if config.slurm_cluster == "slurm" and not shutil.which("sbatch"):
            raise ValueError(
                "the slurm executor found no Slurm here (no sbatch on PATH); run the sweep on a Slurm "
                "login node, or use --executor local or ray"
            )
        if config.slurm_cluster == "local" and config.cell_gpus and not visible_gpus():
            raise _no_gpus(config.cell_gpus, "this machine (slurm_cluster: local)")
        self.config = config
        self.slots = config.workers or cells
        self.threads = config.cell_cpus or 1
        self.scratch = scratch

    def start(self):
        cfg = self.config
        self.executor = self.submitit.AutoExecutor(folder=self.scratch / "slurm" / "%j", cluster=cfg.slurm_cluster)
        params: dict[str, Any] = {"timeout_min": cfg.time, "cpus_per_task": self.threads, "name": "layerprobe-cell"}
        if cfg.cell_gpus:
            params["gpus_per_node"] = cfg.cell_gpus
        if cfg.partition:
            params["slurm_partition"] = cfg.partition
        self.executor.update_parameters(**params)
        self.jobs: list = []
        return (
            f"slurm{' (submitit local executor)' if cfg.slurm_cluster == 'local' else ''}: a job per cell, "
            f"{self.threads} CPU(s){f', {cfg.cell_gpus} GPU(s)' if cfg.cell_gpus else ''}, {cfg.time} min"
            f"{', partition ' + cfg.partition if cfg.partition else ''}, {self.slots} at most at once"
        )

    def submit(self, jobs):
        if len(jobs) == 1:
            handles = [self.executor.submit(run_cell, jobs[0])]
        else:
            with self.executor.batch():
                handles = [self.executor.submit(run_cell, job) for job in jobs]
        self.jobs += handles
        return handles

    def wait(self, handles, timeout):
        return _poll(lambda j: j.done(), handles, timeout, 1.0)

    def result(self, job):
        self.jobs = [j for j in self.jobs if j is not job]
        try:
            return job.result()
        except Exception as e:  # the job failed, was cancelled or timed out
            lines = [x for x in str(e).strip().splitlines() if x.strip()]
            return _failed(
                f"slurm job {job.job_id} failed: {type(e).__name__}: {(lines or [''])[-1][:300]}; its "
                f"logs: {self.scratch / 'slurm' / str(job.job_id)}"
            )

    def where(self, job):
        return f"slurm job {job.job_id}"

    def close(self):
        for job in getattr(self, "jobs", []):
            if not job.done():
                job.cancel(check=False)


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
