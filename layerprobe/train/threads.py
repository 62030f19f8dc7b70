"""What a run's numbers depend on besides its config: torch's thread count, chosen from the cores other processes
leave free now (or the config, the sweep executor, OMP_NUM_THREADS), and the machine (cores, CPU, torch build,
OpenMP's wait policy), recorded in summary.json."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path


def machine_info() -> dict:
    """What the numbers depend on besides the config: torch's thread count, the cores, the CPU model and the torch
    build (bf16 autocast makes results differ between CPUs and thread counts)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default: spin, then sleep)"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
    }


def busy_cores(
    seconds: float = 0.3, stat: str = "/proc/stat", own: str = "/proc/self/stat", sleep=time.sleep
) -> float | None:
    """How many cores other processes keep busy now: the busy share of all cores' time between two reads of
    ``/proc/stat`` ``seconds`` apart, times the cores, less this process's own time (``/proc/self/stat``, so its
    own lingering OpenMP threads do not count). None where there is no ``/proc/stat`` (not Linux)."""
    first = _cpu_ticks(stat, own)
    if first is None:
        return None
    sleep(seconds)
    second = _cpu_ticks(stat, own)
    if second is None:
        return None
    (busy0, total0, mine0, cores), (busy1, total1, mine1, _) = first, second
    if total1 <= total0:
        return 0.0
    return max(0.0, (busy1 - busy0 - (mine1 - mine0)) / (total1 - total0) * cores)


def _cpu_ticks(stat: str, own: str) -> tuple[int, int, int, int] | None:
    """(busy ticks, all ticks, this process's ticks, cores) from /proc/stat's ``cpu`` line (user nice system idle
    iowait irq softirq steal; guest time is inside user) and /proc/self/stat (utime, stime)."""
    try:
        lines = Path(stat).read_text().splitlines()
        mine_fields = Path(own).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in lines[0].split()[1:9]]
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy, sum(ticks), int(mine_fields[11]) + int(mine_fields[12]), cores or 1


def choose_threads(threads: int = 0, busy: Callable[[], float | None] | None = None) -> tuple[int, str]:
    """Set torch's thread count and return it with the reason. In order: ``threads`` (the config's), the cores a
    sweep executor assigned this cell (``LAYERPROBE_ASSIGNED_THREADS``), ``OMP_NUM_THREADS``, else the cores that
    other processes do not keep busy now (``busy``: :func:`busy_cores`, a core counts as busy from half on).

    On a small shared machine a torch process that takes a core another process keeps busy makes OpenMP's
    barriers wait out whole scheduler slices: measured here, a toy CPT step went from 0.17 s to 7-8 s (45x) while
    another training job held the same 2 cores (``benchmarks/results/wait_policy.json`` for one busy core of two).
    The 1-minute load average, used before, lags: a run started right after another command got half the cores
    for its whole life.
    """
    import torch

    cores = os.cpu_count() or 1
    if threads:
        reason = f"config: threads {threads}"
    elif os.environ.get("LAYERPROBE_ASSIGNED_THREADS"):
        threads = int(os.environ["LAYERPROBE_ASSIGNED_THREADS"])
        reason = f"the sweep executor assigned {threads} core(s) to this cell"
    elif os.environ.get("OMP_NUM_THREADS"):
        threads = torch.get_num_threads()
        reason = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    else:
        now = (busy or busy_cores)()
        if now is None:
            return torch.get_num_threads(), "torch's default (no /proc/stat to see which cores are busy)"
        taken = math.floor(now + 0.5)
        threads = max(1, min(torch.get_num_threads(), cores - taken))
        reason = (
            f"{threads} of {cores} cores: {now:.1f} busy with other processes now (/proc/stat over 0.3 s); "
            "set threads to choose"
        )
    torch.set_num_threads(threads)
    return threads, reason
