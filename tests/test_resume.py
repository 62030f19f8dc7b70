"""Run folders that never lose work: killed runs resume, changed settings rerun only their stages, a lock.

The kill test starts `layerprobe train` as a subprocess and SIGKILLs it at seeded points spread over CPT, merge,
SFT and evaluation (a point is a file the run writes: a checkpoint folder, a stage folder, an answers file), then
runs it again; the final summary and records must equal those of an uninterrupted run (deterministic on CPU).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import SHORT

from layerprobe import cli
from layerprobe.core import run_results, rundir
from layerprobe.record.records import load_records

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16
KEY = ["phase", "step", "layer", "block", "module", "param", "quantity"]
# checkpoint after every step: each kill point inside a phase has a checkpoint just before it
CONFIG = {
    **SHORT,
    "cpt": {**SHORT["cpt"], "max_steps": STEPS},
    "sft": {**SHORT["sft"], "max_steps": STEPS},
    "checkpoint": {"minutes": 1e-9},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    (d / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    env = {
        **os.environ,
        "LAYERPROBE_CACHE": str(d / "cache"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "LAYERPROBE_EVAL_CACHE": "0",
    }  # evaluations really run again
    return d, env


def _argv(d: Path, out: Path, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "layerprobe",
        "train",
        "--record",
        "--no-report",
        "--config",
        str(d / "config.yaml"),
        "--out",
        str(out),
        *extra,
    ]


def _run(argv, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def _kill_points(seed: int) -> list[tuple[str, object]]:
    """Six points in the order a run reaches them: 2 in CPT, the merge, 2 in SFT, the evaluation (each kill is a
    process start, ~11 s on 2 cores)."""
    rng = random.Random(seed)
    cpt = sorted(rng.sample(range(2, STEPS), 2))
    sft = sorted(rng.sample(range(2, STEPS), 2))
    return [("cpt", k) for k in cpt] + [("merge", None)] + [("sft", k) for k in sft] + [("eval", None)]


def _reached(out: Path, point) -> bool:
    stage, step = point
    folder = rundir.stage_dir(out, stage)
    if stage == "eval":  # mid-evaluation: the first model's answers are written, the others' not yet
        return rundir.answers_path(out, "base").is_file()
    if step is None:
        return folder.is_dir()
    return (rundir.checkpoint_dir(folder) / f"checkpoint-{step}").exists()


@pytest.fixture(scope="module")
def reference(setup):
    d, env = setup
    out = d / "uninterrupted"
    p = _run(_argv(d, out), env)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.mark.slow
def test_sigkill_at_six_seeded_points_then_resume_equals_an_uninterrupted_run(setup, reference):
    d, env = setup
    out = d / "killed"
    kills = []
    for point in _kill_points(seed=11):
        proc = subprocess.Popen(_argv(d, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        t0 = time.time()
        while proc.poll() is None and not _reached(out, point) and time.time() - t0 < 240:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills.append(point)
        proc.wait()
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()[-3000:]
        if proc.returncode == 0:
            break
    assert len(kills) == 6, kills
    assert {stage for stage, _ in kills} == {"cpt", "merge", "sft", "eval"}
    p = _run(_argv(d, out), env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (rundir.stage_dir(out, "cpt") / "trainer").exists()  # checkpoints are removed once a stage is done

    a, b = run_results.read_summary(reference), run_results.read_summary(out)
    for model in ("base", "cpt", "sft"):
        assert a[model] == b[model], model
    assert [a["stages"][s].get("steps") for s in rundir.STAGES] == [b["stages"][s].get("steps") for s in rundir.STAGES]
    ra, rb = load_records(reference), load_records(out)
    assert not rb.duplicated(KEY).any()  # no step recorded twice
    for phase in ("cpt", "sft"):  # every step once
        grad = rb[(rb["phase"] == phase) & (rb["quantity"] == "grad_norm")]
        assert sorted(grad["step"].unique()) == list(range(1, STEPS + 1))
    both = ra.merge(rb, on=KEY, how="outer", indicator=True)
    assert (both["_merge"] == "both").all()  # the same rows, drift measured from each phase's start
    assert (both["value_x"] - both["value_y"]).abs().max() == 0.0
    assert set(rb["run"]) == {"killed"}


@pytest.mark.slow
def test_eval_change_reevaluates_only_and_sft_change_keeps_cpt(setup, reference):
    d, env = setup
    trained = {s: _hashes(rundir.stage_dir(reference, s)) for s in ("cpt", "merge", "sft")}
    records = _hashes(rundir.records_dir(reference))
    p = _run(_argv(d, reference, "--eval.max_probes", "5"), env)  # refused: it would replace the evaluation
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "eval.max_probes: 0 -> 5" in p.stderr and "eval would run again; kept: cpt, merge, sft" in p.stderr

    p = _run(_argv(d, reference, "--eval.max_probes", "5", "--overwrite"), env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "overwrite  eval runs again (eval.max_probes: 0 -> 5); kept: cpt, merge, sft" in p.stdout
    assert p.stdout.count("already done, skipped") == 3
    assert {s: _hashes(rundir.stage_dir(reference, s)) for s in ("cpt", "merge", "sft")} == trained
    assert _hashes(rundir.records_dir(reference)) == records
    assert run_results.read_metrics(reference)["cpt"]["n_probes"] == 10  # 5 cloze + 5 QA

    p = _run(_argv(d, reference, "--eval.max_probes", "5", "--sft.learning_rate", "0.001", "--overwrite"), env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "overwrite  sft, eval run again (sft.learning_rate: 0.005 -> 0.001); kept: cpt, merge" in p.stdout
    for s in ("cpt", "merge"):
        assert _hashes(rundir.stage_dir(reference, s)) == trained[s]
    assert _hashes(rundir.stage_dir(reference, "sft")) != trained["sft"]
    cpt_records = {k: v for k, v in records.items() if k.startswith("cpt-") or k == "meta-cpt.json"}
    assert {k: v for k, v in _hashes(rundir.records_dir(reference)).items() if k in cpt_records} == cpt_records


def test_a_bad_sft_selector_fails_before_cpt_starts(setup, capsys, monkeypatch):
    d, env = setup
    monkeypatch.setenv("LAYERPROBE_CACHE", env["LAYERPROBE_CACHE"])
    monkeypatch.delenv("LAYERPROBE_DEBUG", raising=False)
    out = d / "bad"
    for flag, value in (("--sft.select", "layers:99"), ("--cpt.target_modules", "q_proj,nope_proj")):
        code = cli.main(["train", "--config", str(d / "config.yaml"), "--out", str(out), flag, value])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"{flag[2:].split('.')[0]}." in err[0] and "before anything trains" in err[0]
        assert not out.exists()  # no cpt/ folder: nothing ran


def test_a_second_process_on_the_same_folder_is_refused_naming_the_holder(setup):
    d, env = setup
    out = d / "locked"
    with rundir.locked(out):
        p = _run(_argv(d, out), env)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and f"is in use by process {os.getpid()}" in err[0], err
    assert not (out / "cpt").exists() and not rundir.is_run(out)
