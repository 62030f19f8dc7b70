"""layerprobe.analyse.matched: arms at matched drift, checked against hand computations and planted effects."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from layerprobe.analyse.matched import at_drift, contrasts, curve_at_drift, mixed_fit


def _runs(rng, units=6, slopes=None, levels=None, noise=0.05, unit_sd=0.2):
    """Two doses per (unit, arm): y = unit effect + level[arm] + slope[arm] * log(drift / 0.006) + noise."""
    slopes = slopes or {"a": 0.5, "b": 0.5, "c": 0.5}
    levels = levels or {"a": 0.0, "b": 0.0, "c": 0.0}
    rows = []
    for u in range(units):
        base = rng.normal(0, unit_sd)
        for arm in slopes:
            for dose, drift in (("low", 0.003), ("high", 0.012)):
                drift *= math.exp(rng.normal(0, 0.2))
                y = base + levels[arm] + slopes[arm] * math.log(drift / 0.006) + rng.normal(0, noise)
                rows.append({"unit": f"u{u}", "arm": arm, "dose": dose, "drift": drift, "y": y})
    return pd.DataFrame(rows)


def test_at_drift_is_the_line_through_two_doses():
    runs = pd.DataFrame({"unit": ["u", "u"], "arm": ["a", "a"], "drift": [0.002, 0.01], "y": [1.0, 3.0]})
    got = at_drift(runs, "y", 0.006).iloc[0]
    w = (math.log(0.006) - math.log(0.002)) / (math.log(0.01) - math.log(0.002))
    assert got["value"] == pytest.approx(1.0 + w * 2.0, rel=1e-12)
    assert not got["extrapolated"] and got["n_runs"] == 2
    out = at_drift(runs.assign(drift=[0.007, 0.01]), "y", 0.006).iloc[0]
    assert out["extrapolated"]
    w = (math.log(0.006) - math.log(0.007)) / (math.log(0.01) - math.log(0.007))
    assert out["value"] == pytest.approx(1.0 + w * 2.0, rel=1e-12)
    single = at_drift(runs.iloc[:1], "y", 0.006).iloc[0]
    assert math.isnan(single["value"])


def test_at_drift_rejects_bad_input():
    runs = pd.DataFrame({"unit": ["u"], "arm": ["a"], "drift": [0.0], "y": [1.0]})
    with pytest.raises(ValueError, match="drift must be > 0"):
        at_drift(runs, "y", 0.006)
    with pytest.raises(ValueError, match="missing y2"):
        at_drift(runs.assign(drift=0.1), "y2", 0.006)


def test_curve_at_drift_interpolates_where_the_run_crosses():
    curves = pd.DataFrame(
        {
            "run": "r1",
            "unit": "u",
            "arm": "a",
            "step": [0, 10, 20, 30],
            "drift": [0.0, 0.002, 0.008, 0.02],
            "y": [0.0, -0.5, -1.5, -3.0],
        }
    )
    more = curves.assign(run="r2", y=curves["y"] * 2)
    never = curves.assign(run="r3", drift=curves["drift"] / 10)  # never reaches the reference: left out
    got = curve_at_drift(pd.concat([curves, more, never]), "y", 0.006).iloc[0]
    w = (math.log(0.006) - math.log(0.002)) / (math.log(0.008) - math.log(0.002))
    one = -0.5 + w * (-1.0)
    assert got["value"] == pytest.approx((one + 2 * one) / 2, rel=1e-12)
    assert got["n_runs"] == 2


def test_contrasts_are_paired_t_over_units_with_holm():
    rng = np.random.default_rng(0)
    values = pd.DataFrame(
        [
            {"unit": f"u{u}", "arm": arm, "value": rng.normal(0.3 * i, 1)}
            for u in range(5)
            for i, arm in enumerate("abc")
        ]
    )
    got = contrasts(values, margin=0.5)
    wide = values.pivot(index="unit", columns="arm", values="value")
    ps = []
    for _, row in got.iterrows():
        ref = stats.ttest_rel(wide[row["a"]], wide[row["b"]])
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert row["diff"] == pytest.approx((wide[row["a"]] - wide[row["b"]]).mean(), rel=1e-12)
        ps.append(ref.pvalue)
    assert list(got["p_holm"]) == pytest.approx(list(multipletests(ps, method="holm")[1]), rel=1e-12)
    assert set(got["verdict"]) <= {"differs", "equivalent", "inconclusive"}
    assert len(got) == 3


def test_mixed_fit_finds_a_planted_interaction_and_not_an_absent_one():
    rng = np.random.default_rng(1)
    planted = mixed_fit(_runs(rng, slopes={"a": 0.5, "b": 0.5, "c": 1.5}), "y", 0.006, "a")
    assert planted["interaction"]["p"] < 1e-6 and planted["interaction"]["df"] == 2
    slope_c = planted["params"].set_index("term").loc["C(arm, Treatment('a'))[T.c]:x"]
    assert slope_c["lo"] < 1.0 < slope_c["hi"]
    assert planted["arms_at_reference"]["p"] > 1e-3  # no level difference was planted
    level = mixed_fit(_runs(rng, levels={"a": 0.0, "b": 0.4, "c": 0.0}), "y", 0.006, "a")
    b = level["params"].set_index("term").loc["C(arm, Treatment('a'))[T.b]"]
    assert b["lo"] < 0.4 < b["hi"] and level["arms_at_reference"]["p"] < 1e-6
    assert level["interaction"]["p"] > 1e-3
    with pytest.raises(ValueError, match="reference arm"):
        mixed_fit(_runs(rng), "y", 0.006, "z")


def _crossed_runs(rng, world_sd, seed_sd, noise=0.05):
    """3 worlds x 3 seeds, every block with the same two drifts per arm (a balanced design)."""
    rows = []
    w_eff, s_eff = rng.normal(0, world_sd, 3), rng.normal(0, seed_sd, 3)
    for w in range(3):
        for s in range(3):
            block = rng.normal(0, 0.05)
            for arm, slope in (("a", 0.5), ("b", 1.5)):
                for drift in (0.003, 0.012):
                    y = w_eff[w] + s_eff[s] + block + slope * math.log(drift / 0.006) + rng.normal(0, noise)
                    rows.append({"unit": f"w{w}-s{s}", "world": w, "seed": s, "arm": arm, "drift": drift, "y": y})
    return pd.DataFrame(rows)


def test_crossed_fit_equals_least_squares_on_a_balanced_design_and_names_its_variances():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(3)
    runs = _crossed_runs(rng, world_sd=1.0, seed_sd=0.0)
    fit = mixed_fit(runs, "y", 0.006, "a", crossed=("world", "seed"))
    # every block holds the same design rows, so generalised least squares under any such covariance is plain OLS
    ols = smf.ols("y ~ C(arm, Treatment('a')) * x", runs.assign(x=np.log(runs["drift"] / 0.006))).fit()
    got = fit["params"].set_index("term")["estimate"]
    assert got.to_numpy() == pytest.approx(ols.params[got.index].to_numpy(), abs=1e-6)
    assert set(fit["var"]) == {"world", "seed", "unit"}
    assert fit["var"]["world"] > 10 * fit["var"]["seed"]  # only the worlds were given a spread
    assert fit["interaction"]["p"] < 1e-6
    with pytest.raises(ValueError, match="crossed names columns"):
        mixed_fit(runs, "y", 0.006, "a", crossed=("toy",))
