"""`layerprobe relate`: a relation planted in synthetic run folders is recovered; every number against scipy/numpy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from layerprobe import cli
from layerprobe.records import COLUMNS, write_table
from layerprobe.relate import (RelateConfig, bh_qvalues, correlate, min_exact_p, relate_runs, run_features,
                               spearman_rows)

LAYERS = 6
BLOCKS = ("attn", "mlp")
MODULES = {"attn": ("q_proj", "v_proj"), "mlp": ("up_proj", "down_proj")}
GRAD_STEPS = list(range(1, 21))
UPDATE_STEPS = {"cpt": [5, 10, 15, 20], "sft": [1, 2, 4, 8, 16]}  # every:5 and log-spaced


def write_run(folder: Path, rng: np.random.Generator, planted: float | None = None, frozen: tuple = (),
              noise: float = 0.01) -> dict:
    """A run folder with records of both phases, diff rows and summary.json; returns the values written.

    retention_drop = 2 * final drift of (sft, layer 2, mlp) + noise when ``planted`` is None; ``frozen`` lists
    (phase, layer, block) cells without trainable parameters (audit rows only)."""
    rows, truth = [], {}

    def add(phase, step, layer, block, module, param, quantity, value):
        rows.append((folder.name, phase, step, layer, block, module, param, quantity, float(value)))

    for phase in ("cpt", "sft"):
        for layer in [-1, *range(LAYERS)]:
            for block in (("embed",) if layer < 0 else BLOCKS):
                key = (phase, layer, block)
                for module in MODULES.get(block, ("embed_tokens",)):
                    add(phase, 0, layer, block, module, "", "n_trainable", 0 if key in frozen else 100)
                if key in frozen:
                    continue
                drift = np.sort(rng.uniform(0, 0.1, size=4))
                for step, d in zip(UPDATE_STEPS["cpt"], drift):
                    add(phase, step, layer, block, "", "", "drift_ratio", d)
                    add(phase, step, layer, block, "q_proj", "", "drift_ratio", 9.0)  # per-module: not a feature
                    add(phase, step, layer, block, "", f"model.layers.{layer}.x", "drift_ratio", 9.0)
                truth[("final_drift",) + key] = drift[-1]
                ups = rng.uniform(1e-4, 1e-3, size=len(UPDATE_STEPS[phase]))
                for step, u in zip(UPDATE_STEPS[phase], ups):
                    add(phase, step, layer, block, "", "", "update_ratio", u)
                gaps = np.diff([0, *UPDATE_STEPS[phase]])
                truth[("update_path",) + key] = float(np.sum(ups * gaps))
                grads = rng.uniform(0.1, 2, size=len(GRAD_STEPS))
                for step, g in zip(GRAD_STEPS, grads):
                    add(phase, step, layer, block, "", "", "grad_norm", g)
                truth[("grad_mass",) + key] = math.sqrt(float(np.sum(grads ** 2)))
        add(phase, 20, -1, "", "", "", "grad_norm_total", 1.0)
        add(phase, 20, -1, "eval", "", "", "cloze_acc", 0.5)  # the pipeline's evaluation rows: not features
    for layer in range(LAYERS):
        for block in BLOCKS:
            v = rng.uniform(0, 1)
            add("diff", -1, layer, block, "", "", "undo_frac", v)
            truth[("undo_frac", "diff", layer, block)] = v
    folder.mkdir(parents=True)
    write_table(pd.DataFrame(rows, columns=list(COLUMNS)), folder / "records" / "part.parquet")
    drop = 2 * truth[("final_drift", "sft", 2, "mlp")] + rng.normal(0, noise) if planted is None else planted
    summary = {"run": folder.name, "cpt": {"cloze_acc": 0.9, "qa_acc": 0.5, "gozaru_rate": 0.0},
               "sft": {"cloze_acc": 0.9 - drop, "qa_acc": None, "gozaru_rate": float(rng.uniform())}}
    (folder / "summary.json").write_text(json.dumps(summary))
    truth["retention_drop"] = drop
    return truth


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    truths = {f"r{i:02d}": write_run(root / f"r{i:02d}", rng, frozen=(("sft", 5, "attn"),) if i < 3 else ())
              for i in range(12)}
    return root, truths


def test_features_match_the_records(sweep):
    root, truths = sweep
    res = relate_runs(root)
    f = res.features.set_index(["run", "feature", "phase", "layer", "block"])["value"]
    for run, truth in truths.items():
        for key, value in truth.items():
            if isinstance(key, tuple):
                assert f[(run,) + key] == pytest.approx(value, rel=1e-12), (run, key)
    assert set(res.features["feature"]) == {"final_drift", "update_path", "grad_mass", "undo_frac"}
    assert set(res.features["block"]) == {"embed", "attn", "mlp"}
    # a frozen cell did not move (drift and update 0); its gradient was never measured (missing)
    for run in ("r00", "r01", "r02"):
        assert f[(run, "final_drift", "sft", 5, "attn")] == 0 and f[(run, "update_path", "sft", 5, "attn")] == 0
        assert (run, "grad_mass", "sft", 5, "attn") not in f.index
    cell = res.table[(res.table["feature"] == "grad_mass") & (res.table["phase"] == "sft") & (res.table["layer"] == 5)
                     & (res.table["block"] == "attn") & (res.table["outcome"] == "retention_drop")]
    assert cell["n_runs"].item() == 9
    assert list(res.outcomes.columns) == ["retention_drop", "gozaru_rate"]  # qa_drop: null in every summary
    expected = {r: t["retention_drop"] for r, t in truths.items()}
    assert res.outcomes["retention_drop"].to_dict() == pytest.approx(expected)


def test_planted_relation_is_recovered_and_numbers_match_scipy(sweep):
    root, truths = sweep
    res = relate_runs(root)
    t = res.table
    assert list(t.columns) == ["feature", "phase", "layer", "block", "outcome", "rho", "p", "q", "n_runs", "p_method"]
    key = ["feature", "phase", "layer", "block", "outcome"]
    hit = t.set_index(key).loc[("final_drift", "sft", 2, "mlp", "retention_drop")]
    assert hit["rho"] > 0.9 and hit["q"] < 0.01 and hit["n_runs"] == 12 and hit["p_method"] == "t"
    found = res.findings()
    assert list(zip(found["feature"], found["phase"], found["layer"], found["block"], found["outcome"])) == [
        ("final_drift", "sft", 2, "mlp", "retention_drop")]
    assert any("1 of" in n and "q < 0.05" in n for n in res.notes)
    # every rho and p against scipy.stats.spearmanr, q against false_discovery_control
    runs = sorted(truths)
    wide = res.features.pivot_table(index=key[:-1], columns="run", values="value")[runs]
    for row in t.sample(40, random_state=0).itertuples():
        x = wide.loc[(row.feature, row.phase, row.layer, row.block)].to_numpy()
        y = res.outcomes.loc[runs, row.outcome].to_numpy()
        ok = np.isfinite(x) & np.isfinite(y)
        ref = stats.spearmanr(x[ok], y[ok])
        assert row.rho == pytest.approx(ref.statistic, abs=1e-12) and row.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert np.allclose(t["q"], stats.false_discovery_control(t["p"].to_numpy()), rtol=1e-12)


def test_choosing_features_outcomes_and_phases(sweep):
    root, _ = sweep
    res = relate_runs(root, features="final_drift,undo_frac", outcomes="retention_drop,sft.gozaru_rate", phases="sft")
    t = res.table
    assert set(t["feature"]) == {"final_drift", "undo_frac"} and set(t["phase"]) == {"sft", "diff"}
    assert set(t["outcome"]) == {"retention_drop", "sft.gozaru_rate"}
    assert len(t) == 2 * (LAYERS * 2 + 1 + LAYERS * 2)
    with pytest.raises(ValueError, match="unknown outcome 'gozaru'"):
        relate_runs(root, outcomes="gozaru")
    with pytest.raises(ValueError, match=r"feature\(s\) \['rel_change'\] not found"):
        relate_runs(root, features="rel_change")
    with pytest.raises(FileNotFoundError, match="no runs in"):
        relate_runs(root / "r00" / "records")


def test_too_few_runs_says_so_and_exact_p_values_match_permutation_test(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        write_run(tmp_path / f"r{i}", rng, noise=0.0)
    res = relate_runs(tmp_path, outcomes="retention_drop", features="final_drift")
    assert res.notes[0].startswith("too few runs for a claim: 4 run(s)")
    t = res.table
    assert (t["p_method"] == "exact").all() and (t["n_runs"] == 4).all()
    # the planted cell agrees perfectly in rank, yet the exact p cannot go below 2/4! = 1/12
    hit = t[(t["phase"] == "sft") & (t["layer"] == 2) & (t["block"] == "mlp")].iloc[0]
    assert hit["rho"] == pytest.approx(1.0) and hit["p"] == pytest.approx(min_exact_p(4)) == pytest.approx(1 / 12)
    assert t["p"].min() >= 1 / 12 - 1e-12 and not (t["q"] < 0.05).any()
    assert stats.spearmanr([1, 2, 3, 4], [1, 2, 3, 4]).pvalue == 0.0  # what the t approximation would have said
    # exact p-values (with ties) against scipy.stats.permutation_test
    x = np.array([[0.3, 0.1, 0.1, 0.7, 0.2, 0.9], [1, 2, 3, 4, 5, 6], [6, 1, 5, 2, 4, 3.0]])
    y = np.array([0.5, 0.5, 0.1, 0.8, 0.3, 0.2])
    rho, p, method = spearman_rows(x, y)
    assert method == "exact"
    for i in range(len(x)):
        ref = stats.permutation_test((x[i],), lambda a, i=i: stats.spearmanr(a, y).statistic,
                                     permutation_type="pairings", n_resamples=np.inf)
        assert rho[i] == pytest.approx(stats.spearmanr(x[i], y).statistic, abs=1e-12)
        assert p[i] == pytest.approx(ref.pvalue, abs=1e-12)
    assert min_exact_p(5) == pytest.approx(1 / 60) and min_exact_p(5) < 0.05 < min_exact_p(4)


def test_p_values_are_calibrated_and_bh_keeps_false_positives_rare():
    """Null sweeps (no relation at all): raw p < 0.05 about 5 % of the time, a BH discovery in few sweeps."""
    rng = np.random.default_rng(2)
    cells = pd.MultiIndex.from_product([["final_drift"], ["sft"], range(25), BLOCKS], names=["feature", "phase",
                                                                                             "layer", "block"])
    raw, any_hit = [], []
    for n_runs in [7] * 20 + [12] * 20:  # exact and t p-values
        runs = [f"r{i}" for i in range(n_runs)]
        feats = pd.DataFrame(rng.normal(size=(len(cells), n_runs)), index=cells, columns=runs)
        feats = feats.stack().rename("value").reset_index().rename(columns={"level_4": "run"})
        outcomes = pd.DataFrame({"retention_drop": rng.normal(size=n_runs)}, index=pd.Index(runs, name="run"))
        t = correlate(feats, outcomes)
        raw.append(t["p"].to_numpy())
        any_hit.append(bool((t["q"] < 0.05).any()))
    share = float(np.mean(np.concatenate(raw) < 0.05))
    assert 0.03 < share < 0.07
    assert np.mean(any_hit) <= 0.15
    assert np.allclose(bh_qvalues(np.array([0.01, np.nan, 0.04, 0.03])), [0.03, np.nan, 0.04, 0.04], equal_nan=True)


def test_cli_writes_table_and_heatmaps(sweep, tmp_path, capsys):
    root, _ = sweep
    out = tmp_path / "relate"
    assert cli.main(["relate", str(root), "--out", str(out), "--features", "final_drift",
                     "--outcomes", "retention_drop", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "1 of" in text and "final_drift" in text and "sft" in text
    table = pd.read_csv(out / "relate.csv", keep_default_na=False, na_values=[""])
    assert len(table) == 2 * (LAYERS * 2 + 1) and table["rho"].notna().all()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["rho_final_drift_cpt_retention_drop.png", "rho_final_drift_sft_retention_drop.png"]
    assert cli.main(["relate", str(tmp_path / "missing")]) == 2
    assert "no sweep folder" in capsys.readouterr().err


def test_config_checks():
    with pytest.raises(ValueError, match="min_runs must be an int >= 3"):
        RelateConfig(min_runs=2)
    with pytest.raises(ValueError, match="alpha must lie in"):
        RelateConfig(alpha=1.5)
    f = run_features(pd.DataFrame(columns=list(COLUMNS)))
    assert f.empty and list(f.columns) == ["feature", "phase", "layer", "block", "value"]
