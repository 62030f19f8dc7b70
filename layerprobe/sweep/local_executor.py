"""The local executor's worker processes: N cells at once on this machine, each a fresh ``python -m
layerprobe.sweep.worker`` process with cores // N torch threads, or one GPU each (:mod:`layerprobe.sweep.executors`
holds the executors' interface and its config). Never imports torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from layerprobe.sweep.cell import THREAD_VARS, CellJob
from layerprobe.sweep.executors import Executor, ExecutorConfig, failed_result, no_gpus, poll, visible_gpus


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
            raise no_gpus(config.cell_gpus, "this machine")
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
                    [sys.executable, "-m", "layerprobe.sweep.worker", str(job_file), str(result)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stderr=log,
                    stdout=None if job.echo else log,
                )
            out.append(_Worker(job, process, result, slot))
        self.running += out
        return out

    def wait(self, handles, timeout):
        return poll(lambda w: w.process.poll() is not None, handles, timeout, 0.2)

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
        return failed_result(f"worker process {w.process.pid} ended without a result ({how}); its log: {w.job.log}")

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
