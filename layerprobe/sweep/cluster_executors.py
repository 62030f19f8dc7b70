"""The cluster executors: each cell a Ray task (``pip install 'layerprobe[ray]'``) or a Slurm job through submitit
(``pip install 'layerprobe[slurm]'``); :mod:`layerprobe.sweep.executors` holds the executors' interface and its
config. Ray and submitit are imported only here, when their executor is made. Never imports torch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from layerprobe.sweep.cell import run_cell
from layerprobe.sweep.executors import (
    Executor,
    ExecutorConfig,
    failed_result,
    no_gpus,
    poll,
    require_extra,
    visible_gpus,
)


class RayExecutor(Executor):
    """Each cell a Ray task with its CPUs and GPUs, in a fresh worker process."""

    def __init__(self, config: ExecutorConfig, cells: int, verbose: bool = False):
        self.ray = require_extra("ray")
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
                no_gpus(cfg.cell_gpus, "the Ray cluster")
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
            return failed_result(f"ray task failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}")

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
        self.submitit = require_extra("slurm")
        if config.slurm_cluster == "slurm" and not shutil.which("sbatch"):
            raise ValueError(
                "the slurm executor found no Slurm here (no sbatch on PATH); run the sweep on a Slurm "
                "login node, or use --executor local or ray"
            )
        if config.slurm_cluster == "local" and config.cell_gpus and not visible_gpus():
            raise no_gpus(config.cell_gpus, "this machine (slurm_cluster: local)")
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
        return poll(lambda j: j.done(), handles, timeout, 1.0)

    def result(self, job):
        self.jobs = [j for j in self.jobs if j is not job]
        try:
            return job.result()
        except Exception as e:  # the job failed, was cancelled or timed out
            lines = [x for x in str(e).strip().splitlines() if x.strip()]
            return failed_result(
                f"slurm job {job.job_id} failed: {type(e).__name__}: {(lines or [''])[-1][:300]}; its "
                f"logs: {self.scratch / 'slurm' / str(job.job_id)}"
            )

    def where(self, job):
        return f"slurm job {job.job_id}"

    def close(self):
        for job in getattr(self, "jobs", []):
            if not job.done():
                job.cancel(check=False)
