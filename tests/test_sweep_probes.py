"""A sweep's probe curves: each cell's probe means per step (probe_curves.csv) and one figure faceted by condition."""

from __future__ import annotations

import pandas as pd
import pytest

from layerprobe.plot.probes import sweep_probe_curves, sweep_probe_figure
from layerprobe.record.records import RecordWriter


def _cell(folder, slope):
    w = RecordWriter(folder, folder.name, "sft")
    for step in (0, 5, 10):
        w.add(step, -1, "probe", "cloze", "", "probe_logprob", -1.0 - slope * step)
        w.add(step, -1, "probe", "cloze", "p1", "probe_logprob", 7.0)  # a per-probe row: not a mean
        w.add(step, -1, "probe", "instruction", "", "style_logodds", slope * step)
        w.add(step, 0, "attn", "q_proj", "", "drift_ratio", 0.1 * step)  # recorder rows: not curves
    w.flush()


def test_sweep_probe_curves_and_figure(tmp_path):
    cells = {"a,seed=1": 0.1, "a,seed=2": 0.2, "b,seed=1": 0.3}
    for name, slope in cells.items():
        _cell(tmp_path / name, slope)
    (tmp_path / "no-records").mkdir()
    curves = sweep_probe_curves({**{c: tmp_path / c for c in cells}, "no-records": tmp_path / "no-records"})
    assert set(curves["cell"]) == set(cells) and len(curves) == 3 * 3 * 2
    got = curves.set_index(["cell", "step", "quantity"])["value"]
    assert got[("b,seed=1", 10, "probe_logprob")] == pytest.approx(-4.0)
    assert got[("a,seed=2", 5, "style_logodds")] == pytest.approx(1.0)
    table = curves.assign(condition=curves["cell"].str[0], seed=curves["cell"].str[-1])
    png = sweep_probe_figure(table, tmp_path / "probes_over_steps.png")
    assert png.is_file() and png.stat().st_size > 5000
    assert sweep_probe_curves({}).empty and isinstance(sweep_probe_curves({}), pd.DataFrame)
