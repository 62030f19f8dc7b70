"""Records I/O and heatmaps: plotting reads records alone and never imports torch."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerprobe.record.records import COLUMNS, RecordWriter, load_records, write_table

ROOT = Path(__file__).resolve().parents[1]


def _synthetic(run_dir, phase="cpt", layers=4, steps=5):
    w = RecordWriter(run_dir, run=Path(run_dir).name, phase=phase)
    for s in range(1, steps + 1):
        for layer in range(layers):
            for block, modules in (("attn", ["q_proj", "v_proj"]), ("mlp", ["up_proj", "down_proj"])):
                for m in modules:
                    w.add(s, layer, block, m, "", "drift_ratio", 0.01 * s * (layer + 1))
                w.add(s, layer, block, "", "", "drift_ratio", 0.01 * s * (layer + 1))
        w.add(s, -1, "embed", "embed_tokens", "", "drift_ratio", 0.001 * s)
        w.add(s, -1, "embed", "", "", "drift_ratio", 0.001 * s)
    w.flush()


def test_plot_cli_writes_pngs_without_importing_torch(tmp_path):
    _synthetic(tmp_path / "run")
    code = (
        "import sys, layerprobe.cli as c; rc = c.main(['plot', sys.argv[1], '--quantity', 'drift_ratio']); "
        "assert 'torch' not in sys.modules, 'plotting imported torch'; sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    pngs = sorted(p.name for p in (tmp_path / "run" / "figures").glob("*.png"))
    assert pngs == ["cpt_drift_layer_module.png", "cpt_drift_ratio_layer_step.png"]
    for p in (tmp_path / "run" / "figures").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_plot_error_names_available_quantities(tmp_path, capsys):
    _synthetic(tmp_path / "run")
    from layerprobe.cli import main

    assert main(["plot", str(tmp_path / "run"), "--quantity", "grad_norm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("layerprobe plot: error: nothing to plot in ") and err.count("\n") == 1, err
    assert "no aggregated rows of ['grad_norm']" in err and "the records have ['drift_ratio']" in err


def test_load_records_one_run_a_folder_of_runs_and_csv(tmp_path):
    _synthetic(tmp_path / "sweep" / "a")
    _synthetic(tmp_path / "sweep" / "b", phase="sft")
    one = load_records(tmp_path / "sweep" / "a")
    both = load_records(tmp_path / "sweep")
    assert list(both.columns) == list(COLUMNS)
    assert set(both.run) == {"a", "b"} and len(both) == 2 * len(one)
    assert both.dtypes["step"] == np.int64 and both.dtypes["value"] == np.float64
    csv = write_table(one, tmp_path / "a.csv")
    back = load_records(csv)
    pd.testing.assert_frame_equal(back, one)
    with pytest.raises(ValueError, match="ending in .parquet or .csv"):
        write_table(one, tmp_path / "a.txt")
    with pytest.raises(FileNotFoundError, match="no records"):
        load_records(tmp_path / "nothing")


KILLED = """
import sys, time, torch
sys.path.insert(0, sys.argv[2])
from conftest import make_tiny_llama
from layerprobe.record.recorder import Recorder
m = make_tiny_llama()
opt = torch.optim.SGD(m.parameters(), lr=0.01)
rec = Recorder(m, sys.argv[1], phase="cpt", flush_every_s=0.0)
x = torch.randint(0, 64, (2, 8))
for i in range(10_000):
    m(input_ids=x, labels=x).loss.backward(); rec.before_step(); opt.step(); rec.after_step(); opt.zero_grad()
    print(i, flush=True)
"""


def test_sigkill_keeps_flushed_records(tmp_path):
    p = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(tmp_path), str(ROOT / "tests")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    for line in p.stdout:
        if int(line.split()[0]) >= 5:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    df = load_records(tmp_path)  # every part on disk is complete
    steps = sorted(df[df.quantity == "grad_norm_total"].step)
    assert steps[:6] == [1, 2, 3, 4, 5, 6]
    assert not list((tmp_path / "records").glob("*.tmp"))
    meta = json.loads((tmp_path / "records" / "meta-cpt.json").read_text())
    assert meta["packages"]["torch"] and meta["phase"] == "cpt"
