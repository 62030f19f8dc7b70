"""Under torchrun (2 CPU processes, gloo) the records equal a single process's and are written once."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from layerprobe.record.records import load_records

SCRIPT = Path(__file__).with_name("ddp_train.py")
ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MASTER_PORT": "29517"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not found",
)
def test_ddp_records_equal_single_process(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    _run([sys.executable, str(SCRIPT), str(tmp_path / "single"), "4", "1"], tmp_path)
    _run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(SCRIPT), str(tmp_path / "ddp"), "2", "1"],
        tmp_path,
    )
    assert not list((tmp_path / "ddp" / "records").glob("*-r1-*")), "rank 1 must not write records"
    keys = ["step", "layer", "block", "module", "param", "quantity"]
    a = load_records(tmp_path / "single").set_index(keys).value.sort_index()
    b = load_records(tmp_path / "ddp").set_index(keys).value.sort_index()
    assert a.index.equals(b.index)
    assert len(a) > 100
    assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max()), (a - b).abs().sort_values().tail()


@pytest.mark.slow
def test_torchrun_without_use_cpu_warns(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not found")
    r = _run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29518", str(SCRIPT), str(tmp_path / "x"), "2", "0"],
        tmp_path,
    )
    assert "the Trainer is not running distributed" in r.stderr
    assert not list((tmp_path / "x" / "records").glob("*-r1-*"))


@pytest.mark.slow
def test_trainer_fsdp_on_cpu_runs_ddp_and_the_recorder_says_so(tmp_path):
    """TrainingArguments(fsdp=..., use_cpu=True): accelerate shards on GPUs only and runs DDP; the recorder warns,
    takes clipping over (pre-clip norms, clip_factor rows) and labels the parameters whole."""
    import json

    torchrun = str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun not found")
    r = _run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29519",
            str(SCRIPT),
            str(tmp_path / "x"),
            "2",
            "1",
            "fsdp",
        ],
        tmp_path,
    )
    assert "asked for FSDP but the model is not sharded" in r.stderr
    df = load_records(tmp_path / "x")
    assert (df[df.quantity == "clip_factor"].value < 1).all() and len(df[df.quantity == "clip_factor"]) == 3
    meta = json.loads((tmp_path / "x" / "records" / "meta-cpt.json").read_text())
    assert meta["parameters"] == "whole" and meta["grad_norm_clip"] == "pre"
