"""Sweep executors: one plan (each CPT trained once, its SFT cells after it) on local workers, Ray and Slurm
(submitit's local executor), each giving the sequential run's results.csv; a killed worker fails only its cell and
a rerun resumes it without retraining finished stages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_sweep import TINY  # the toy world at its smallest: one cell trains and evaluates in seconds

from layerprobe.cli import main
from layerprobe.core import rundir
from layerprobe.sweep import load_sweep, run_sweep
from layerprobe.sweep.executors import ExecutorConfig, visible_gpus
from layerprobe.sweep.plan import make_plan

# 2 CPT groups (cpt.lora_alpha) x 2 SFT settings
GRID = {"cpt.lora_alpha": [8, 16], "sft.lora_alpha": [8, 32]}
CELLS = [
    "cpt.lora_alpha=8,sft.lora_alpha=8,seed=5",
    "cpt.lora_alpha=8,sft.lora_alpha=32,seed=5",
    "cpt.lora_alpha=16,sft.lora_alpha=8,seed=5",
    "cpt.lora_alpha=16,sft.lora_alpha=32,seed=5",
]
TRAINERS = {CELLS[0], CELLS[2]}  # the first cell of each CPT group


def spec(out: Path, **extra) -> dict:
    # one torch thread in every executor: the sequential run would otherwise take the free cores, and a reduction
    # over 2 threads moves the losses in their 7th digit (loss_rise, a difference of two, in its 5th)
    return {"base": {**TINY, "threads": 1}, "grid": GRID, "seeds": [5], "out": str(out), **extra}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LAYERPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))  # workers inherit it
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, cache) -> Path:
    """The reference results.csv: the cells one after another in this process (local with one worker)."""
    out = tmp_path_factory.mktemp("seq") / "sw"
    table = run_sweep(load_sweep(spec(out)), log=lambda s: None)
    assert table["cell"].tolist() == CELLS
    return out / "results.csv"


def numbers(table: pd.DataFrame) -> pd.DataFrame:
    """results.csv without the wall times (``*seconds*``) and where a cell ran (``machine.*``), in cell order."""
    return (
        table[[c for c in table.columns if "seconds" not in c and not c.startswith("machine.")]]
        .sort_values("cell")
        .reset_index(drop=True)
    )


def assert_same_results(out: Path, sequential: Path) -> None:
    table = pd.read_csv(out / "results.csv")
    assert table["cell"].tolist() == CELLS
    assert len(numbers(table).columns) > 40  # every metric of summary.json, the item counts, the outcomes
    pd.testing.assert_frame_equal(numbers(table), numbers(pd.read_csv(sequential)))


def assert_each_cpt_trained_once(out: Path) -> None:
    """Per CPT group exactly one cell trained CPT and merge; the others' markers name it as where they came from."""
    trained = {n for n in CELLS if "reused_from" not in json.loads((out / n / "cpt" / "DONE").read_text())}
    assert trained == TRAINERS
    for n in set(CELLS) - TRAINERS:
        for folder in ("cpt", "merged"):
            source = Path(json.loads((out / n / folder / "DONE").read_text())["reused_from"]).parent.name
            assert source in TRAINERS and source.split(",")[0] == n.split(",")[0], (n, source)


# -- the plan and bad input (no training) --------------------------------------------------------------------------


def test_plan_trains_each_cpt_once_then_fans_out(tmp_path):
    sw = load_sweep(spec(tmp_path))
    plan = make_plan(sw.cells, sw.out)
    pending = list(CELLS)
    assert [plan.role(n, pending) for n in CELLS] == [
        "trains its CPT",
        f"waits for the CPT of {CELLS[0]}",
        "trains its CPT",
        f"waits for the CPT of {CELLS[2]}",
    ]
    assert plan.next(pending, set()) == CELLS[0]
    assert plan.next(pending[1:], {CELLS[0]}) == CELLS[2]  # the other group's trainer, not a waiting cell
    assert plan.next([CELLS[1], CELLS[3]], {CELLS[0], CELLS[2]}) is None
    # a trainer whose CPT and merge are done releases its group while it goes on with SFT and evaluation
    for stage in ("cpt", "merge"):
        rundir.mark_done(sw.out / CELLS[2], stage, {"fingerprint": "f"})
    assert plan.next([CELLS[1], CELLS[3]], {CELLS[0], CELLS[2]}) == CELLS[3]
    assert plan.donors(CELLS[3], []) == [sw.out / CELLS[2], sw.out]
    shutil.rmtree(sw.out / CELLS[2])  # and back to before that, to follow a trainer that fails
    plan = make_plan(sw.cells, sw.out)
    plan.done(CELLS[2], ok=False)  # a failed trainer releases nobody: the next cell of its group trains the CPT
    assert plan.next([CELLS[1], CELLS[3]], {CELLS[0]}) == CELLS[3]
    plan.done(CELLS[0], ok=True)
    assert plan.next([CELLS[1]], set(CELLS[2:])) == CELLS[1]
    assert plan.donors(CELLS[1], [Path("elsewhere")]) == [sw.out / CELLS[0], sw.out, Path("elsewhere")]
    # without reuse nobody waits; a finished cell is skipped and releases its group
    assert make_plan(sw.cells, sw.out, reuse=False).next(CELLS[1:], {CELLS[0]}) == CELLS[1]
    (sw.out / CELLS[2]).mkdir(parents=True)
    (sw.out / CELLS[2] / "summary.json").write_text("{}")
    plan = make_plan(sw.cells, sw.out)
    assert plan.finished == {CELLS[2]} and plan.role(CELLS[3], [CELLS[3]]) == f"reuses the CPT of {CELLS[2]}"


def test_a_finished_run_elsewhere_with_the_same_cpt_releases_its_group_from_the_start(tmp_path):
    from layerprobe.core.run_results import write_config

    sw = load_sweep(spec(tmp_path))
    other = tmp_path / "other"
    for name, cell in [("same", sw.cells[0]), ("unfinished", sw.cells[2])]:
        (other / name).mkdir(parents=True)
        write_config(other / name, cell.config)
    (other / "same" / "summary.json").write_text("{}")
    plan = make_plan(sw.cells, sw.out, reuse_from=[other, tmp_path / "missing"])
    pending = list(CELLS)
    assert [plan.role(n, pending) for n in CELLS] == [
        f"reuses the CPT of {other / 'same'}",
        f"reuses the CPT of {other / 'same'}",
        "trains its CPT",
        f"waits for the CPT of {CELLS[2]}",
    ]
    assert plan.summary(pending) == "4 cells: 0 finished, 1 train a CPT, 3 start from another cell's CPT"
    assert plan.next(pending[1:], {CELLS[0]}) == CELLS[1]  # no waiting for a CPT that exists
    assert plan.donors(CELLS[1], [other]) == [other / "same", sw.out, other]
    assert make_plan(sw.cells, sw.out, reuse=False, reuse_from=[other]).donor == {}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--executor", "dask"], "unknown executor 'dask'; expected one of local, ray, slurm"),
        (["--workers", "0"], "workers must be an integer >= 1, got 0"),
        (["--workers", "2", "--cell-gpus", "1"], "cell-gpus=1 but this machine has no GPUs"),
        (["--executor", "slurm", "--slurm-cluster", "local", "--cell-gpus", "1"], "has no GPUs"),
        (["--address", "auto"], "address applies to the ray executor only"),
        (["--executor", "ray"], "pip install 'layerprobe[ray]'"),
        (["--executor", "slurm"], "pip install 'layerprobe[slurm]'"),
    ],
)
def test_bad_executor_input_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPUs, whatever the machine has
    if "pip install" in message:
        monkeypatch.setitem(sys.modules, "ray", None)  # not installed (import fails)
        monkeypatch.setitem(sys.modules, "submitit", None)
    elif "slurm" in args:
        pytest.importorskip("submitit")
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump(spec(tmp_path / "sw")))
    assert main(["sweep", str(f), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "sw").exists()


def test_executor_in_the_yaml_and_the_command_line_on_top(tmp_path):
    from types import SimpleNamespace

    from layerprobe.commands.sweep import executor_config

    sw = load_sweep(spec(tmp_path, executor={"name": "ray", "workers": 4, "address": "auto"}))
    assert sw.executor == ExecutorConfig(name="ray", workers=4, address="auto")
    assert load_sweep(spec(tmp_path, executor="slurm")).executor.name == "slurm"
    args = dict(
        executor=None,
        workers=None,
        cell_cpus=None,
        cell_gpus=None,
        address=None,
        partition=None,
        time=None,
        slurm_cluster=None,
    )
    assert executor_config(SimpleNamespace(**{**args, "workers": 2}), sw) == ExecutorConfig("ray", 2, address="auto")
    # another executor on the command line drops the YAML's settings of its own (address means nothing to local)
    assert executor_config(SimpleNamespace(**{**args, "executor": "local"}), sw) == ExecutorConfig("local")
    with pytest.raises(ValueError, match="unknown executor key 'nodes'; valid keys: name, workers"):
        load_sweep(spec(tmp_path, executor={"name": "slurm", "nodes": 2}))


# -- running the toy grid -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_workers_give_the_sequential_results_without_ray(tmp_path, sequential, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # the local executor needs no Ray
    f = tmp_path / "sweep.yaml"  # the executor from the YAML, run through the CLI
    f.write_text(yaml.safe_dump(spec(tmp_path / "sw", executor={"name": "local", "workers": 2})))
    assert main(["sweep", str(f)]) == 0
    out = capsys.readouterr().out
    assert "local: 2 worker processes, 1 torch thread each" in out and "4/4 done, 0 running, 0 failed" in out
    assert out.count("trains its CPT") == 2 and out.count("reuses the CPT of") == 2
    assert_same_results(tmp_path / "sw", sequential)
    assert_each_cpt_trained_once(tmp_path / "sw")
    state = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert state["runs"][-1]["executor"] == "local, 2 workers"
    assert {state["cells"][n]["reused_cpt_from"] for n in CELLS} == {None, CELLS[0], CELLS[2]}
    logs = sorted((tmp_path / "sw" / ".cells").glob("*.log"))  # each worker's output, warnings included
    assert len(logs) == 4 and not [p.name for p in logs if "Warning" in p.read_text()]


@pytest.mark.slow
def test_ray_gives_the_sequential_results(tmp_path, sequential):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sw = load_sweep(spec(tmp_path / "sw"))
        if not visible_gpus():  # asking for GPUs the cluster lacks: refused before any cell runs
            with pytest.raises(ValueError, match="no GPUs"):
                run_sweep(sw, executor=ExecutorConfig("ray", cell_gpus=1), log=lambda s: None)
            assert not list(sw.out.glob("*/config.yaml"))
        lines: list[str] = []
        table = run_sweep(sw, executor=ExecutorConfig("ray", workers=2), log=lines.append)
        assert ray.is_initialized()  # a Ray it did not start is left running
    finally:
        ray.shutdown()
    assert table.attrs["failed"] == [] and "each cell a task with 1 CPU(s), 2 at most at once" in lines[0]
    assert_same_results(sw.out, sequential)
    assert_each_cpt_trained_once(sw.out)


@pytest.mark.slow
def test_slurm_through_submitits_local_executor_gives_the_sequential_results(tmp_path, sequential):
    pytest.importorskip("submitit")
    sw = load_sweep(spec(tmp_path / "sw"))
    lines: list[str] = []
    table = run_sweep(sw, executor=ExecutorConfig("slurm", workers=2, time=10, slurm_cluster="local"), log=lines.append)
    assert table.attrs["failed"] == [], lines
    assert sum("started (slurm job " in s for s in lines) == 4
    assert_same_results(sw.out, sequential)
    assert_each_cpt_trained_once(sw.out)


@pytest.mark.slow
def test_a_killed_worker_fails_its_cell_only_and_a_rerun_resumes_it(tmp_path, sequential):
    """SIGKILL the worker that trains a CPT once its merge is done (mid-cell): that cell fails, the others finish
    (its group's other cell starts from the killed cell's CPT), and a rerun resumes it without retraining."""
    sw = load_sweep(spec(tmp_path / "sw"))
    victim = sw.out / CELLS[0]
    killed: list[int] = []

    def kill_mid_cell():
        end = time.time() + 300
        while time.time() < end and not killed:
            if (victim / "merged" / "DONE").is_file() and not (victim / "summary.json").is_file():
                pid = int((victim / ".lock").read_text())
                assert pid != os.getpid()
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_mid_cell, daemon=True)
    watcher.start()
    lines: list[str] = []
    table = run_sweep(sw, executor=ExecutorConfig("local", workers=2), log=lines.append)
    watcher.join()
    assert killed and table.attrs["failed"] == [CELLS[0]], lines
    assert any(f"{CELLS[0]}: FAILED" in s and "killed by SIGKILL" in s for s in lines), lines
    assert sorted(table["cell"]) == sorted(CELLS[1:])  # the others finished
    assert not (victim / "summary.json").exists() and (victim / "cpt" / "DONE").is_file()

    markers = {p: p.stat().st_mtime_ns for p in sw.out.glob("*/*/DONE")}
    lines.clear()
    table = run_sweep(load_sweep(spec(tmp_path / "sw")), executor=ExecutorConfig("local", workers=2), log=lines.append)
    assert table.attrs["failed"] == []
    assert sum(s.endswith("finished, skipped") for s in lines) == 3
    assert any(f"{CELLS[0]}: resumed (cpt, merge" in s for s in lines), lines
    assert {p: p.stat().st_mtime_ns for p in markers} == markers  # nothing finished was trained again
    assert_same_results(sw.out, sequential)
    assert_each_cpt_trained_once(sw.out)


@pytest.mark.slow
def test_a_cell_another_process_holds_is_skipped_not_failed(tmp_path, sequential):
    from layerprobe.core import rundir

    sw = load_sweep(spec(tmp_path / "sw"))
    lines: list[str] = []
    with rundir.locked(sw.out / CELLS[0]):  # as another worker or sweep working in that folder would
        table = run_sweep(sw, only=CELLS[0], log=lines.append)
    assert table.attrs["failed"] == [] and table.attrs["busy"] == [CELLS[0]]
    assert f"{CELLS[0]}: skipped, " in lines[0] and f"in use by process {os.getpid()}" in lines[0]
    assert CELLS[0] not in json.loads((sw.out / "sweep.json").read_text())["cells"]


def test_one_worker_chooses_its_threads_once_for_the_whole_sweep(monkeypatch):
    """One sweep's cells run with one thread count (under bf16 it moves the numbers): chosen before the first cell
    from the cores busy then, not again before each cell."""
    import torch

    from layerprobe.sweep import executors
    from layerprobe.sweep.cell import CellJob
    from layerprobe.train import threads

    seen, busy = [], iter([0.0, 1.9, 1.9])
    monkeypatch.setattr(threads, "busy_cores", lambda: next(busy))
    for var in ("OMP_NUM_THREADS", "LAYERPROBE_ASSIGNED_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(executors, "run_cell", lambda job, log=None: seen.append(job.threads) or {})
    before = torch.get_num_threads()
    try:
        ex = executors.InlineExecutor()
        for name in ("a", "b", "c"):
            ex.submit([CellJob(name=name, config={}, run_dir=name)])
    finally:
        torch.set_num_threads(before)
    assert seen == [before] * 3
