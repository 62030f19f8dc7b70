"""The pipeline's thread count: from the cores busy now (a faked /proc/stat), an executor's assignment, or the
config; and the reason lands in summary.json's machine block (test_pipeline checks the block)."""

from __future__ import annotations

import os

import pytest
import torch

from layerprobe.train import threads
from layerprobe.train.threads import busy_cores, choose_threads

# /proc/stat's cpu line: user nice system idle iowait irq softirq steal guest guest_nice
STAT = "cpu  {u} 0 {s} {idle} {io} 0 0 0 7 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n"
SELF = "4242 (py thon) S 1 2 3 4 5 6 7 8 9 10 {ut} {st} 0 0 20 0 1 0\n"


def _fake(tmp_path, before, after):
    """Two snapshots of /proc/stat and /proc/self/stat; ``sleep`` moves from the first to the second."""
    stat, own = tmp_path / "stat", tmp_path / "self"

    def put(s):
        stat.write_text(STAT.format(**s))
        own.write_text(SELF.format(**s))

    put(before)
    return str(stat), str(own), lambda seconds: put(after)


def _plain(before, after, cores=2):
    """Reference: (busy ticks of all others) / (all ticks) * cores, busy = user + nice + system + irq... less
    idle and iowait, and less this process's utime + stime."""
    busy = (
        (after["u"] + after["s"])
        - (before["u"] + before["s"])
        - (after["ut"] + after["st"] - before["ut"] - before["st"])
    )
    total = sum(after[k] - before[k] for k in ("u", "s", "idle", "io"))
    return max(0.0, busy / total * cores)


@pytest.mark.parametrize(
    "after",
    [
        dict(u=1100, s=200, idle=1200, io=10, ut=0, st=0),  # one core of two busy
        dict(u=1100, s=200, idle=1200, io=10, ut=50, st=10),  # part of it this process's own
        dict(u=1000, s=200, idle=1400, io=10, ut=0, st=0),  # idle
        dict(u=1190, s=210, idle=1000, io=110, ut=0, st=0),  # both busy, iowait counts as idle
    ],
)
def test_busy_cores_from_two_reads_of_proc_stat(tmp_path, after):
    before = dict(u=1000, s=200, idle=1000, io=10, ut=0, st=0)
    stat, own, sleep = _fake(tmp_path, before, after)
    got = busy_cores(0.3, stat, own, sleep)
    assert got == pytest.approx(_plain(before, after))


def test_busy_cores_without_proc_stat_is_none(tmp_path):
    assert busy_cores(0.0, str(tmp_path / "missing"), str(tmp_path / "missing"), lambda s: None) is None


@pytest.fixture
def four_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    for var in ("OMP_NUM_THREADS", "LAYERPROBE_ASSIGNED_THREADS"):
        monkeypatch.delenv(var, raising=False)
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("busy, threads", [(0.0, 4), (0.4, 4), (0.6, 3), (1.0, 3), (2.49, 2), (3.7, 1), (9.0, 1)])
def test_threads_are_the_cores_not_busy_now(four_threads, busy, threads):
    got, reason = choose_threads(0, lambda: busy)
    assert got == threads == torch.get_num_threads()
    assert f"{threads} of 4 cores: {busy:.1f} busy" in reason


def test_the_config_then_the_executor_then_omp_num_threads_decide(four_threads, monkeypatch):
    def never():
        raise AssertionError("measured although the count was given")

    assert choose_threads(2, never) == (2, "config: threads 2") and torch.get_num_threads() == 2
    monkeypatch.setenv("LAYERPROBE_ASSIGNED_THREADS", "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(1, never)[0] == 1  # the config wins over the executor
    got, reason = choose_threads(0, never)
    assert got == 3 and "executor assigned 3" in reason
    monkeypatch.delenv("LAYERPROBE_ASSIGNED_THREADS")
    torch.set_num_threads(4)
    assert choose_threads(0, never) == (4, "OMP_NUM_THREADS=3")  # torch read the variable when it loaded


def test_no_proc_stat_keeps_torchs_default(four_threads):
    got, reason = choose_threads(0, lambda: None)
    assert got == 4 and "torch's default" in reason


def test_the_pipeline_measures_with_the_module_function(four_threads, monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda: 2.0)
    assert choose_threads(0)[0] == 2


def test_passive_waiting_unless_the_user_chose_and_recorded(monkeypatch):
    from layerprobe.core.config import wait_passively
    from layerprobe.train.threads import machine_info

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert machine_info()["omp_wait_policy"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    wait_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_cli_sets_passive_waiting_before_torch_loads():
    import subprocess
    import sys

    code = (
        "import os, sys, contextlib, io; os.environ.pop('OMP_WAIT_POLICY', None); from layerprobe import cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): cli.main(['--help'])\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["PASSIVE", "False"]
