"""layerprobe.analyse.within: per-interval probe change beside each block's movement, correlated within runs, tested
over units; checked against hand computations on records written as the recorder and the probes write them."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from layerprobe.analyse.within import intervals, within_runs
from layerprobe.record.records import COLUMNS

STEPS = [0, 10, 20, 30, 40, 50]


def _records(falls, attn_gains, mlp_gains, update=0.01):
    """Probe mean (cloze_heldout) falling by ``falls`` per interval; block drift gaining ``*_gains`` per interval;
    drift recorded every 5 steps (linear inside an interval), update ratios every 5 steps."""
    rows, value = [], -1.0
    rows.append(("r", "sft", 0, -1, "probe", "cloze_heldout", "", "probe_logprob", value))
    drift = {"attn": 0.0, "mlp": 0.0}
    for i, (start, end) in enumerate(itertools.pairwise(STEPS)):
        value -= falls[i]
        rows.append(("r", "sft", end, -1, "probe", "cloze_heldout", "", "probe_logprob", value))
        rows.append(("r", "sft", end, -1, "probe", "cloze_heldout", "p0", "probe_logprob", 5.0))  # not a mean
        for block, gains in (("attn", attn_gains), ("mlp", mlp_gains)):
            for step in (start + 5, end):
                d = drift[block] + gains[i] * (step - start) / 10
                for module in ("q_proj", "k_proj") if block == "attn" else ("up_proj",):
                    rows.append(("r", "sft", step, 0, block, module, "", "drift_ratio", d))
                    rows.append(("r", "sft", step, 0, block, module, "", "update_ratio", update * (i + 1)))
            drift[block] += gains[i]
    return pd.DataFrame(
        rows, columns=["run", "phase", "step", "layer", "block", "module", "param", "quantity", "value"]
    )[list(COLUMNS)]


def test_intervals_by_hand():
    falls, attn, mlp = [0.1, 0.5, 0.2, 0.4, 0.3], [1, 5, 2, 4, 3], [3, 1, 4, 1, 5]
    iv = intervals(_records(falls, attn, mlp)).set_index(["start", "block"])
    assert iv.loc[(10, "attn"), "probe_change"] == pytest.approx(-0.5)
    assert iv.loc[(10, "attn"), "drift_gain"] == pytest.approx(5)
    assert iv.loc[(0, "mlp"), "drift_gain"] == pytest.approx(3)  # from 0 at step 0
    assert iv.loc[(20, "mlp"), "update_mean"] == pytest.approx(0.03)  # steps 25 and 30 of interval 3
    assert len(iv) == 5 * 2


def test_within_runs_is_the_mean_over_units_of_their_runs_rho():
    rng = np.random.default_rng(0)
    recs, units, rhos = {}, {}, {}
    for i in range(6):
        falls = rng.uniform(0.05, 0.5, 5)
        attn = falls * 10 + rng.normal(0, 0.5, 5)  # tracks the fall
        mlp = rng.uniform(1, 5, 5)  # does not
        recs[f"run{i}"], units[f"run{i}"] = _records(falls, attn, mlp), f"u{i // 2}"
        rhos[f"run{i}"] = {b: stats.spearmanr(g, -falls).statistic for b, g in (("attn", attn), ("mlp", mlp))}
    got = within_runs(recs, units).set_index(["feature", "block"])
    for block in ("attn", "mlp"):
        z = pd.Series({r: rhos[r][block] for r in recs}).groupby(pd.Series(units)).mean()
        row = got.loc[("drift_gain", block)]
        assert row["rho"] == pytest.approx(z.mean(), rel=1e-9)
        assert row["p"] == pytest.approx(stats.ttest_1samp(z, 0.0).pvalue, rel=1e-9)
        assert row["n_units"] == 3 and row["n_runs"] == 6
    assert got.loc[("drift_gain", "attn"), "rho"] < -0.8  # more drift gained where the probes fell more
    # the update ratio grows step by step in every run alike: a feature, correlated but not with the fall's size
    assert ("update_mean", "attn") in got.index


def test_within_runs_needs_probes_and_enough_intervals():
    rec = _records([0.1] * 5, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="no run has 4 probe intervals with changing probes"):
        within_runs({"r": rec}, {"r": "u"})  # the probes fall alike in every interval: no correlation
    with pytest.raises(ValueError, match="expected probe_logprob rows of 'qa' probes"):
        intervals(rec, kind="qa")
