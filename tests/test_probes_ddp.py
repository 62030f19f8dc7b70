"""Probes during training under torchrun (2 CPU processes, gloo): every rank takes part, rank 0 writes, and the
probe rows equal a single process's on the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from layerprobe.record.records import load_records
from layerprobe.train.probes import BLOCK

SCRIPT = Path(__file__).with_name("ddp_probe_train.py")
ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not TORCHRUN.exists(), reason="torchrun not found")
def test_ddp_probe_rows_equal_single_process(tmp_path):
    _run([sys.executable, str(SCRIPT), str(tmp_path / "single"), "4"])
    _run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29527", str(SCRIPT), str(tmp_path / "ddp"), "2"])
    assert not list((tmp_path / "ddp" / "records").glob("*-r1-*")), "rank 1 must not write records"
    keys = ["step", "module", "param", "quantity"]
    a = load_records(tmp_path / "single").set_index(keys).value.sort_index()
    b = load_records(tmp_path / "ddp").set_index(keys).value.sort_index()
    assert a.index.equals(b.index)
    assert sorted(a.index.get_level_values("step").unique()) == [0, 1, 2, 3]
    assert set(load_records(tmp_path / "ddp")["block"]) == {BLOCK}
    moved = a.xs(3, level="step") - a.xs(0, level="step")
    assert moved.abs().max() > 1e-3  # training changed what the probes see, so equal rows are not trivial
    assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max()), (a - b).abs().sort_values().tail()
