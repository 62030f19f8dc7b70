"""`layerprobe relate`: a relation planted in synthetic run folders is recovered; strata, frozen blocks, the partial
rho, the permutations within CPT groups and the kept feature table, every number against scipy/numpy."""

from __future__ import annotations

import itertools
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from layerprobe import cli
from layerprobe.analyse.relate import relate_features, relate_runs, write_outputs
from layerprobe.analyse.relate_config import FEATURE_COLUMNS, RelateConfig
from layerprobe.analyse.relate_features import read_features, run_features
from layerprobe.analyse.relate_stats import (
    bh_qvalues,
    correlate,
    effective_n,
    exact_orderings,
    min_exact_p,
    random_orderings,
    spearman_rows,
)
from layerprobe.record.records import COLUMNS, write_table

LAYERS = 6
BLOCKS = ("attn", "mlp")
MODULES = {"attn": ("q_proj", "v_proj"), "mlp": ("up_proj", "down_proj")}
GRAD_STEPS = list(range(1, 21))
UPDATE_STEPS = {"cpt": [5, 10, 15, 20], "sft": [1, 2, 4, 8, 16]}  # every:5 and log-spaced
KEY = ["feature", "phase", "layer", "block"]


def write_run(
    folder: Path,
    rng: np.random.Generator,
    planted: float | None = None,
    frozen: tuple = (),
    noise: float = 0.01,
    method: str | None = None,
    cpt: str | None = None,
    norms: bool = False,
    cpt_seed: int | None = None,
) -> dict:
    """A run folder with records of both phases, diff rows and summary.json; returns the values written.

    retention_drop = 2 * final drift of (sft, layer 2, mlp) + noise when ``planted`` is None; ``frozen`` lists
    (phase, layer, block) cells without trainable parameters (audit rows only). ``method`` writes config.yaml
    (sft.method), ``cpt`` the CPT stage's fingerprint (cpt/DONE); ``norms``: per-module drift and weight-norm rows
    (drawn from a second generator, so the main one's stream is the same), and the whole-model SFT drift they give
    as truth["total_drift"]. ``cpt_seed``: the CPT phase's values drawn from it (equal for runs of one CPT)."""
    rows, truth = [], {}
    extra = np.random.default_rng(zlib.crc32(folder.name.encode()))
    module_drift, start_norm = {}, {}

    def add(phase, step, layer, block, module, param, quantity, value):
        rows.append((folder.name, phase, step, layer, block, module, param, quantity, float(value)))

    main, main_extra = rng, extra
    for phase in ("cpt", "sft"):
        shared = phase == "cpt" and cpt_seed is not None
        rng = np.random.default_rng(cpt_seed) if shared else main
        extra = np.random.default_rng(cpt_seed + 1_000_000) if shared else main_extra
        for layer in [-1, *range(LAYERS)]:
            for block in ("embed",) if layer < 0 else BLOCKS:
                key = (phase, layer, block)
                for module in MODULES.get(block, ("embed_tokens",)):
                    add(phase, 0, layer, block, module, "", "n_trainable", 0 if key in frozen else 100)
                    add(phase, 0, layer, block, module, "", "n_params", 100)
                if key in frozen:
                    continue
                drift = np.sort(rng.uniform(0, 0.1, size=4))
                for step, d in zip(UPDATE_STEPS["cpt"], drift):
                    add(phase, step, layer, block, "", "", "drift_ratio", d)
                    if not norms:
                        add(phase, step, layer, block, "q_proj", "", "drift_ratio", 9.0)  # per-module: not a feature
                    add(phase, step, layer, block, "", f"model.layers.{layer}.x", "drift_ratio", 9.0)
                if norms:
                    for module in MODULES.get(block, ("embed_tokens",)):
                        d_m, n_m = extra.uniform(0.01, 0.2, size=4), extra.uniform(1, 10, size=4)
                        for step, d, n in zip(UPDATE_STEPS["cpt"], d_m, n_m):
                            add(phase, step, layer, block, module, "", "drift_ratio", d)
                            add(phase, step, layer, block, module, "", "weight_norm", n)
                        if phase == "sft":
                            module_drift[(layer, block, module)] = d_m[-1]
                        start_norm[(layer, block, module)] = n_m[0] if phase == "sft" else n_m[-1]
                truth[("final_drift",) + key] = drift[-1]
                ups = rng.uniform(1e-4, 1e-3, size=len(UPDATE_STEPS[phase]))
                for step, u in zip(UPDATE_STEPS[phase], ups):
                    add(phase, step, layer, block, "", "", "update_ratio", u)
                gaps = np.diff([0, *UPDATE_STEPS[phase]])
                truth[("update_path",) + key] = float(np.sum(ups * gaps))
                grads = rng.uniform(0.1, 2, size=len(GRAD_STEPS))
                for step, g in zip(GRAD_STEPS, grads):
                    add(phase, step, layer, block, "", "", "grad_norm", g)
                truth[("grad_mass",) + key] = math.sqrt(float(np.sum(grads**2)))
        add(phase, 20, -1, "", "", "", "grad_norm_total", 1.0)
        add(phase, 20, -1, "eval", "", "", "cloze_acc", 0.5)  # the pipeline's evaluation rows: not features
    rng = main
    for layer in range(LAYERS):
        for block in BLOCKS:
            v = rng.uniform(0, 1)
            add("diff", -1, layer, block, "", "", "undo_frac", v)
            truth[("undo_frac", "diff", layer, block)] = v
    folder.mkdir(parents=True)
    write_table(pd.DataFrame(rows, columns=list(COLUMNS)), folder / "records" / "part.parquet")
    drop = 2 * truth[("final_drift", "sft", 2, "mlp")] + rng.normal(0, noise) if planted is None else planted
    summary = {
        "run": folder.name,
        "cpt": {"cloze_acc": 0.9, "qa_acc": 0.5, "gozaru_rate": 0.0},
        "sft": {"cloze_acc": 0.9 - drop, "qa_acc": None, "gozaru_rate": float(rng.uniform())},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    if method is not None:
        (folder / "config.yaml").write_text(f"# layerprobe run config (hash x)\nseed: 1\nsft:\n  method: {method}\n")
    if cpt is not None:
        (folder / "cpt").mkdir()
        (folder / "cpt" / "DONE").write_text(json.dumps({"what": "CPT", "fingerprint": cpt}))
    truth["retention_drop"] = drop
    if norms:
        moved = sum((module_drift[m] * start_norm[m]) ** 2 for m in module_drift)
        truth["total_drift"] = math.sqrt(moved / sum(n**2 for n in start_norm.values()))
        truth["module_drift"], truth["start_norm"] = module_drift, start_norm
    return truth


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    truths = {
        f"r{i:02d}": write_run(root / f"r{i:02d}", rng, frozen=(("sft", 5, "attn"),) if i < 3 else ())
        for i in range(12)
    }
    return root, truths


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    """Two studies: study_a, 8 LoRA runs on 4 CPTs (2 each); study_b, 6 full and 6 LoRA runs on 3 CPTs (2 + 2
    each). The LoRA runs' SFT froze layer 3's MLP; outcome = the planted relation."""
    root = tmp_path_factory.mktemp("design")
    rng = np.random.default_rng(5)
    truths = {}
    for i in range(8):
        truths[f"study_a/a{i}"] = write_run(
            root / "study_a" / f"a{i}",
            rng,
            frozen=(("sft", 3, "mlp"),),
            method="lora",
            cpt=f"cpt-a{i // 2}",
            norms=True,
            cpt_seed=i // 2,
        )
    for i in range(12):
        method = "full" if i % 2 else "lora"
        frozen = (("sft", 3, "mlp"),) if method == "lora" else ()
        truths[f"study_b/b{i:02d}"] = write_run(
            root / "study_b" / f"b{i:02d}",
            rng,
            frozen=frozen,
            method=method,
            cpt=f"cpt-b{i // 4}",
            norms=True,
            cpt_seed=10 + i // 4,
        )
    res = relate_runs([root / "study_a", root / "study_b"], outcomes="retention_drop,gozaru_rate")
    return root, truths, res


def _x(res, row) -> pd.Series:
    """A cell's values per run, frozen runs NaN (what the correlation may use)."""
    f = res.features
    f = f[
        (f["feature"] == row.feature)
        & (f["phase"] == row.phase)
        & (f["layer"] == row.layer)
        & (f["block"] == row.block)
    ]
    return f.set_index("run")["value"].where(~f.set_index("run")["frozen"])


def _frozen(res, row) -> pd.Series:
    f = res.features
    f = f[
        (f["feature"] == row.feature)
        & (f["phase"] == row.phase)
        & (f["layer"] == row.layer)
        & (f["block"] == row.block)
    ]
    return f.set_index("run")["frozen"]


def _stratum_runs(res, stratum: str) -> list[str]:
    d = res.design
    if stratum == "all":
        return sorted(d.index)
    mask = np.ones(len(d), dtype=bool)
    for part in stratum.split(","):
        col, value = part.split("=")
        mask &= (d[col] == value).to_numpy()
    return sorted(d.index[mask])


def _partial_reference(x, y, z) -> float:
    """Pearson correlation of the residuals of rank(x) and rank(y) after least squares on [1, rank(z)]."""
    rx, ry, rz = stats.rankdata(x), stats.rankdata(y), stats.rankdata(z)
    a = np.column_stack([np.ones_like(rz), rz])
    ex = rx - a @ np.linalg.lstsq(a, rx, rcond=None)[0]
    ey = ry - a @ np.linalg.lstsq(a, ry, rcond=None)[0]
    return float(np.corrcoef(ex, ey)[0, 1])


def test_features_match_the_records(sweep):
    root, truths = sweep
    res = relate_runs(root)
    f = res.features.set_index(["run", "feature", "phase", "layer", "block"])
    for run, truth in truths.items():
        for key, value in truth.items():
            if isinstance(key, tuple):
                assert f.loc[(run,) + key, "value"] == pytest.approx(value, rel=1e-12), (run, key)
    assert set(res.features["feature"]) == {"final_drift", "update_path", "grad_mass", "undo_frac"}
    assert set(res.features["block"]) == {"embed", "attn", "mlp"}
    # a frozen cell is a category: flagged, no value, for every feature its phase recorded
    for run in ("r00", "r01", "r02"):
        for feature in ("final_drift", "update_path", "grad_mass"):
            row = f.loc[(run, feature, "sft", 5, "attn")]
            assert row["frozen"] and np.isnan(row["value"])
        assert f.loc[(run, "undo_frac", "diff", 5, "attn"), "frozen"]  # SFT's change of a block SFT froze
    assert not f.loc[("r03", "final_drift", "sft", 5, "attn"), "frozen"] and f["frozen"].sum() == 12
    t = res.table
    cell = t[
        (t["feature"] == "final_drift")
        & (t["phase"] == "sft")
        & (t["layer"] == 5)
        & (t["block"] == "attn")
        & (t["outcome"] == "retention_drop")
    ]
    assert cell["n_runs"].item() == 9 and cell["n_frozen"].item() == 3
    assert list(res.outcomes.columns) == ["retention_drop", "gozaru_rate"]  # qa_drop: null in every summary
    expected = {r: t["retention_drop"] for r, t in truths.items()}
    assert res.outcomes["retention_drop"].to_dict() == pytest.approx(expected)
    # no config.yaml, no cpt/DONE: method unknown, each run a CPT of its own, no total drift without weight norms
    assert set(res.design["method"]) == {"unknown"} and res.design["cpt_group"].nunique() == 12
    assert res.design["total_drift"].isna().all() and t["partial_rho"].isna().all()
    assert set(t["stratum"]) == {"all"}


def test_planted_relation_is_recovered_and_numbers_match_a_plain_permutation_test(sweep):
    root, truths = sweep
    res = relate_runs(root)
    t = res.table
    assert list(t.columns) == [
        "stratum",
        "feature",
        "phase",
        "layer",
        "block",
        "outcome",
        "rho",
        "rho_tested",
        "p",
        "q",
        "partial_rho",
        "partial_rho_tested",
        "partial_p",
        "partial_q",
        "n_runs",
        "n_frozen",
        "n_groups",
        "n_eff",
        "p_method",
    ]
    hit = t.set_index(KEY + ["outcome"]).loc[("final_drift", "sft", 2, "mlp", "retention_drop")]
    assert hit["rho"] > 0.9 and hit["q"] < 0.03 and hit["n_runs"] == 12 and hit["p_method"] == "runs perm"
    assert hit["n_groups"] == 12 and hit["n_eff"] == 12
    found = res.findings()
    assert list(zip(found["feature"], found["phase"], found["layer"], found["block"], found["outcome"])) == [
        ("final_drift", "sft", 2, "mlp", "retention_drop")
    ]
    assert any("1 of" in n and "q < 0.05" in n for n in res.notes)
    # rho against scipy.stats.spearmanr; p against a plain count over the same random orderings (12! > 2000):
    # 2000, and for a p below 0.05, 4 m / 0.05 in all for the m tests of the stratum
    perms = random_orderings(np.zeros(12, dtype=int), 2000, 0)
    assert len(perms) == 2000 and all(sorted(p) == list(range(12)) for p in perms[:50])
    more = random_orderings(np.zeros(12, dtype=int), math.ceil(4 * len(t) / 0.05) - 2000, 1)
    runs = sorted(truths)
    rows = pd.concat([t[t["n_runs"] == 12].sample(10, random_state=0), t[(t["p"] < 0.05) & (t["n_runs"] == 12)]])
    assert len(rows) > 10
    for row in rows.itertuples():
        x = _x(res, row)[runs].to_numpy()
        y = res.outcomes.loc[runs, row.outcome].to_numpy()
        ref = stats.spearmanr(x, y).statistic
        assert row.rho == pytest.approx(ref, abs=1e-12)
        assert row.p == pytest.approx(_reference_p(stats.rankdata(x), stats.rankdata(y), perms, more), abs=1e-12)
        assert row.p == pytest.approx(stats.spearmanr(x, y).pvalue, abs=0.03)  # and near the t approximation
    assert np.allclose(t["q"], stats.false_discovery_control(t["p"].to_numpy()), rtol=1e-12)


def _pearson_null(a: np.ndarray, b: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``a`` with ``b`` reordered by each row of ``perms``."""
    bp = b[perms]
    a = (a - a.mean()) / a.std()
    bp = (bp - bp.mean(axis=1, keepdims=True)) / bp.std(axis=1, keepdims=True)
    return bp @ a / len(a)


def _reference_p(a: np.ndarray, b: np.ndarray, perms: np.ndarray, more: np.ndarray | None = None) -> float:
    """Two-sided p of corr(a, b) from random orderings: 2 (1 + k) / (1 + B) with k the smaller tail count; below
    0.05, over ``perms`` and ``more`` together."""
    obs = float(np.corrcoef(a, b)[0, 1])

    def p_of(null):
        le, ge = np.sum(null <= obs + 1e-9), np.sum(null >= obs - 1e-9)
        return min(1.0, 2 * (min(le, ge) + 1) / (len(null) + 1))

    null = _pearson_null(a, b, perms)
    p = p_of(null)
    if p < 0.05 and more is not None:
        p = p_of(np.concatenate([null, _pearson_null(a, b, more)]))
    return p


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
    assert (t["p_method"] == "runs exact").all() and (t["n_runs"] == 4).all()
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
        ref = stats.permutation_test(
            (x[i],), lambda a, i=i: stats.spearmanr(a, y).statistic, permutation_type="pairings", n_resamples=np.inf
        )
        assert rho[i] == pytest.approx(stats.spearmanr(x[i], y).statistic, abs=1e-12)
        assert p[i] == pytest.approx(ref.pvalue, abs=1e-12)
    assert min_exact_p(5) == pytest.approx(1 / 60) and min_exact_p(5) < 0.05 < min_exact_p(4)


def test_p_values_are_calibrated_and_bh_keeps_false_positives_rare():
    """Null sweeps (no relation at all): raw p < 0.05 about 5 % of the time, a BH discovery in few sweeps."""
    rng = np.random.default_rng(2)
    cells = pd.MultiIndex.from_product(
        [["final_drift"], ["sft"], range(25), BLOCKS], names=["feature", "phase", "layer", "block"]
    )
    raw, any_hit = [], []
    for n_runs in [7] * 20 + [12] * 20:  # exact and random permutations
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


# ------------------------------------------------------------------------------------------ the design


def test_design_is_read_from_the_run_folders(design):
    _, truths, res = design
    d = res.design
    assert sorted(d.index) == sorted(truths)
    assert (d.loc[[r for r in d.index if r.startswith("study_a/")], "study"] == "study_a").all()
    assert d.groupby("study")["method"].value_counts().to_dict() == {
        ("study_a", "lora"): 8,
        ("study_b", "full"): 6,
        ("study_b", "lora"): 6,
    }
    assert d["cpt_group"].nunique() == 7 and d.loc["study_b/b05", "cpt_group"] == "cpt-b1"
    # the whole-model SFT drift from the records: sqrt(sum d^2 n^2 / sum n^2), frozen modules' norms from CPT
    for run, truth in truths.items():
        assert d.loc[run, "total_drift"] == pytest.approx(truth["total_drift"], rel=1e-12)
        assert d.loc[run, "total_drift_from"] == "records"


def test_strata_rho_equals_spearmanr_on_the_stratum_runs(design):
    _, _, res = design
    t = res.table
    # study_b's full runs are exactly the full runs: that stratum is not repeated
    assert list(dict.fromkeys(t["stratum"])) == [
        "all",
        "method=full",
        "method=lora",
        "study=study_a",
        "study=study_b",
        "study=study_b,method=lora",
    ]
    groups = res.design["cpt_group"]
    for stratum, s in t.groupby("stratum"):
        runs = _stratum_runs(res, stratum)
        for row in s.dropna(subset=["rho"]).sample(8, random_state=1).itertuples():
            x, y = _x(res, row)[runs], res.outcomes.loc[runs, row.outcome]
            ok = (x.notna() & y.notna()).to_numpy()
            assert row.rho == pytest.approx(stats.spearmanr(x[ok], y[ok]).statistic, abs=1e-12)
            assert row.n_runs == ok.sum() and row.n_groups == groups[np.array(runs)[ok]].nunique()
            assert row.n_frozen == (_frozen(res, row)[runs] & y.notna()).sum()
        # q within the stratum
        assert np.allclose(s["q"], bh_qvalues(s["p"].to_numpy()), equal_nan=True)
        assert np.allclose(s["partial_q"], bh_qvalues(s["partial_p"].to_numpy()), equal_nan=True)
    # the planted relation holds in every stratum with enough runs
    hit = t[
        (t["feature"] == "final_drift")
        & (t["phase"] == "sft")
        & (t["layer"] == 2)
        & (t["block"] == "mlp")
        & (t["outcome"] == "retention_drop")
    ].set_index("stratum")
    assert (hit["rho"] > 0.7).all() and hit.loc["all", "q"] < 0.05


def test_frozen_blocks_are_left_out_not_entered_as_zero(design):
    _, truths, res = design
    t = res.table.set_index(["stratum", *KEY, "outcome"])
    row = t.loc[("all", "final_drift", "sft", 3, "mlp", "retention_drop")]
    full = sorted(r for r in truths if res.design.loc[r, "method"] == "full")
    assert row["n_runs"] == 6 and row["n_frozen"] == 14
    x = pd.Series({r: truths[r][("final_drift", "sft", 3, "mlp")] for r in full})
    y = res.outcomes["retention_drop"]
    assert row["rho"] == pytest.approx(stats.spearmanr(x, y[full]).statistic, abs=1e-12)
    # entering the 14 frozen LoRA runs as drift 0 would have given another rho
    zeros = pd.Series({r: truths[r].get(("final_drift", "sft", 3, "mlp"), 0.0) for r in sorted(truths)})
    assert abs(stats.spearmanr(zeros, y[zeros.index]).statistic - row["rho"]) > 0.1
    # a stratum of LoRA runs alone has nothing left to correlate there
    lora = t.loc[("method=lora", "final_drift", "sft", 3, "mlp", "retention_drop")]
    assert lora["n_runs"] == 0 and lora["n_frozen"] == 14 and np.isnan(lora["rho"]) and lora["p_method"] == "none"


def test_partial_rho_is_the_correlation_of_residual_ranks(design):
    _, _, res = design
    t = res.table.dropna(subset=["partial_rho"])
    z = res.design["total_drift"]
    for row in t.sample(40, random_state=2).itertuples():
        runs = _stratum_runs(res, row.stratum)
        x, y = _x(res, row)[runs], res.outcomes.loc[runs, row.outcome]
        ok = (x.notna() & y.notna()).to_numpy()
        ref = _partial_reference(x[ok].to_numpy(), y[ok].to_numpy(), z[np.array(runs)[ok]].to_numpy())
        assert row.partial_rho == pytest.approx(ref, abs=1e-10)
    # its p: a plain loop over the within-CPT orderings of the outcome's residual (stratum all: 2^4 * 4!^3 orderings)
    cand = t[(t["stratum"] == "all") & (t["p_method"] == "within-cpt perm")]
    row = next(pd.concat([cand.sample(1, random_state=3), cand[cand["partial_p"] < 0.05].head(1)]).itertuples())
    runs = _stratum_runs(res, "all")
    x, y = _x(res, row)[runs], res.outcomes.loc[runs, row.outcome]
    ok = (x.notna() & y.notna()).to_numpy()
    codes = pd.factorize(res.design.loc[np.array(runs)[ok], "cpt_group"], sort=True)[0]
    perms = random_orderings(codes, 2000, 0)
    assert (codes[perms] == codes).all()
    m = (res.table["stratum"] == "all").sum()
    more = random_orderings(codes, math.ceil(4 * m / 0.05) - 2000, 1)
    assert (codes[more] == codes).all()
    rx, ry, rz = (stats.rankdata(v) for v in (x[ok], y[ok], z[np.array(runs)[ok]]))
    a = np.column_stack([np.ones_like(rz), rz])
    ex, ey = (r - a @ np.linalg.lstsq(a, r, rcond=None)[0] for r in (rx, ry))
    assert row.partial_p == pytest.approx(_reference_p(ex, ey, perms, more), abs=1e-12)
    # what that p tests: the residuals' correlation among runs of one CPT (centred in each group)
    centred = [pd.Series(e).sub(pd.Series(e).groupby(codes).transform("mean")) for e in (ex, ey)]
    assert row.partial_rho_tested == pytest.approx(np.corrcoef(*centred)[0, 1], abs=1e-10)


def test_permutations_stay_within_cpt_groups_and_that_changes_p():
    """x and y both differ by CPT group, not within it: permuting across groups calls that a relation, the
    within-group permutation does not."""
    rng = np.random.default_rng(7)
    codes = np.repeat(np.arange(3), 3)
    exact, drawn = exact_orderings(codes), random_orderings(codes, 100, 0)
    assert len(exact) == len({tuple(p) for p in exact}) == 216  # 3!^3
    for perms in (exact, drawn):
        assert (codes[perms] == codes).all() and all(sorted(p) == list(range(9)) for p in perms)
    runs = [f"r{i}" for i in range(9)]
    x = codes * 10 + rng.normal(size=9)
    y = codes * 10 + rng.normal(size=9)
    feats = pd.DataFrame(
        {"run": runs, "feature": "final_drift", "phase": "sft", "layer": 0, "block": "mlp", "value": x}
    )
    outcomes = pd.DataFrame({"retention_drop": y}, index=pd.Index(runs, name="run"))
    design = pd.DataFrame(
        {"study": "s", "method": "lora", "cpt_group": [f"g{c}" for c in codes], "total_drift": np.nan}, index=runs
    )
    row = correlate(feats, outcomes, design, RelateConfig(min_within=100)).iloc[0]
    assert row["p_method"] == "within-cpt exact"
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    obs = stats.spearmanr(x, y).statistic
    within = _pearson_null(
        rx,
        ry,
        np.array(
            [
                np.concatenate(p)
                for p in itertools.product(*(itertools.permutations(np.flatnonzero(codes == g)) for g in range(3)))
            ]
        ),
    )
    le, ge = np.sum(within <= obs + 1e-9), np.sum(within >= obs - 1e-9)
    assert row["rho"] == pytest.approx(obs, abs=1e-12)
    assert row["p"] == pytest.approx(min(1.0, 2 * min(le, ge) / 216), abs=1e-12)
    centred = [pd.Series(r).sub(pd.Series(r).groupby(codes).transform("mean")) for r in (rx, ry)]
    assert row["rho_tested"] == pytest.approx(np.corrcoef(*centred)[0, 1], abs=1e-12)
    across = _pearson_null(rx, ry, np.array(list(itertools.permutations(range(9)))))  # all 9! orderings
    across = min(1.0, 2 * min(np.sum(across <= obs + 1e-9), np.sum(across >= obs - 1e-9)) / len(across))
    assert across < 0.01 < 0.2 < row["p"]
    # too few within-group orderings (216 < 1000 asked for): whole groups, over their means (3 groups: exact)
    row = correlate(feats, outcomes, design, RelateConfig(min_within=1000)).iloc[0]
    xg, yg = [pd.Series(v).groupby(codes).mean().to_numpy() for v in (x, y)]
    ref = stats.permutation_test(
        (xg,), lambda a: stats.spearmanr(a, yg).statistic, permutation_type="pairings", n_resamples=np.inf
    ).pvalue
    assert row["p_method"] == "cpt-groups exact" and row["p"] == pytest.approx(ref, abs=1e-12)
    assert row["rho_tested"] == pytest.approx(stats.spearmanr(xg, yg).statistic, abs=1e-12)
    assert row["n_groups"] == 3 and row["n_runs"] == 9


def test_a_within_cpt_relation_is_reported_where_the_pooled_rho_hides_it():
    """Between CPTs x and y rise together, inside each CPT they fall: pooled rho is near 0 while the within-CPT test
    finds the fall; rho_tested is the number that test is about, with the sign of the relation it found."""
    codes = np.repeat(np.arange(4), 6)
    within = np.tile(np.arange(6.0), 4)
    x = codes * 6.0 + within
    y = codes * 0.3 - within * 0.7 + np.random.default_rng(3).normal(0, 0.3, size=24)
    runs = [f"r{i}" for i in range(24)]
    feats = pd.DataFrame(
        {"run": runs, "feature": "final_drift", "phase": "sft", "layer": 0, "block": "attn", "value": x}
    )
    outcomes = pd.DataFrame({"retention_drop": y}, index=pd.Index(runs, name="run"))
    design = pd.DataFrame(
        {"study": "s", "method": "lora", "cpt_group": [f"g{c}" for c in codes], "total_drift": np.nan}, index=runs
    )
    row = correlate(feats, outcomes, design).iloc[0]
    assert row["p_method"] == "within-cpt perm"
    assert row["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12) and abs(row["rho"]) < 0.1
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    centred = [pd.Series(r).sub(pd.Series(r).groupby(codes).transform("mean")) for r in (rx, ry)]
    assert row["rho_tested"] == pytest.approx(np.corrcoef(*centred)[0, 1], abs=1e-12) and row["rho_tested"] < -0.8
    assert row["p"] < 0.01


def test_cpt_features_are_tested_between_groups(design):
    """CPT features are the same for runs of one CPT: within-group orderings say nothing, so groups are permuted."""
    _, _, res = design
    t = res.table
    cpt = t[(t["stratum"] == "all") & (t["phase"] == "cpt") & (t["outcome"] == "retention_drop")]
    assert (cpt["p_method"] == "cpt-groups exact").all() and (cpt["n_groups"] == 7).all()
    runs = _stratum_runs(res, "all")
    groups = res.design.loc[runs, "cpt_group"]
    for row in cpt.sample(4, random_state=4).itertuples():
        x, y = _x(res, row)[runs], res.outcomes.loc[runs, row.outcome]
        assert (x.groupby(groups).nunique() == 1).all()
        xg, yg = stats.rankdata(x.groupby(groups).mean()), stats.rankdata(y.groupby(groups).mean())
        null = _pearson_null(xg, yg, np.array(list(itertools.permutations(range(7)))))  # all 7! orderings
        obs = stats.spearmanr(xg, yg).statistic
        ref = min(1.0, 2 * min(np.sum(null <= obs + 1e-9), np.sum(null >= obs - 1e-9)) / len(null))
        assert row.p == pytest.approx(ref, abs=1e-12) and row.rho_tested == pytest.approx(obs, abs=1e-12)
        assert row.n_eff == pytest.approx(_n_eff_reference(x, y, groups), rel=1e-10)


def _n_eff_reference(x: pd.Series, y: pd.Series, groups: pd.Series) -> float:
    """n / (1 + (m0 - 1) icc_x icc_y), the ANOVA intraclass correlations of the ranks, clipped to [0, 1]."""
    n, sizes = len(x), groups.value_counts()
    g = len(sizes)
    m0 = (n - (sizes**2).sum() / n) / (g - 1)

    def icc(v):
        r = pd.Series(stats.rankdata(v), index=v.index)
        means = r.groupby(groups).transform("mean")
        msb = ((means - r.mean()) ** 2).sum() / (g - 1)
        msw = ((r - means) ** 2).sum() / (n - g)
        return float(np.clip((msb - msw) / (msb + (m0 - 1) * msw), 0, 1))

    return n / (1 + (m0 - 1) * icc(x) * icc(y))


def test_effective_n(design):
    _, _, res = design
    t = res.table
    runs = _stratum_runs(res, "study=study_b")
    groups = res.design.loc[runs, "cpt_group"]
    s = t[(t["stratum"] == "study=study_b") & (t["n_runs"] == 12)]
    for row in s.sample(6, random_state=5).itertuples():
        x, y = _x(res, row)[runs], res.outcomes.loc[runs, row.outcome]
        assert row.n_eff == pytest.approx(_n_eff_reference(x, y, groups), rel=1e-10)
        assert 3 - 1e-9 <= row.n_eff <= 12
    codes = np.repeat([0, 1, 2], 4)
    assert effective_n(np.array([codes * 1.0 + 1]), codes * 1.0 + 1, codes)[0] == pytest.approx(12 / 4)  # all between
    assert effective_n(np.arange(12.0)[None], np.arange(12.0), np.arange(12))[0] == 12  # every run its own CPT


# ------------------------------------------------------------------------------------------ the kept inputs


def test_feature_table_round_trip_gives_the_same_table(design, tmp_path):
    _, _, res = design
    paths = write_outputs(res, tmp_path, figures=False)
    assert [p.name for p in paths] == ["relate.csv", "features.parquet"]
    assert paths[1].stat().st_size < 2_000_000
    back = read_features(paths[1])
    assert list(back.columns) == [*FEATURE_COLUMNS, "retention_drop", "gozaru_rate"]
    pd.testing.assert_frame_equal(back, res.features)
    again = relate_features(paths[1])
    pd.testing.assert_frame_equal(again.table, res.table)
    assert again.notes == res.notes
    # and through the command line, from the file alone
    out = tmp_path / "cli"
    assert cli.main(["relate", "--features", str(paths[1]), "--out", str(out), "--no-figures"]) == 0
    table = pd.read_csv(out / "relate.csv", keep_default_na=False, na_values=[""])
    expected = pd.read_csv(paths[0], keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(table, expected)
    with pytest.raises(ValueError, match="not a relate feature table"):
        pd.DataFrame({"run": ["a"]}).to_parquet(tmp_path / "bad.parquet")
        read_features(tmp_path / "bad.parquet")


def test_total_drift_from_the_merged_checkpoint(tmp_path):
    """With RUN/merged the whole-model drift is layerprobe.weights.drift's: every weight of the checkpoint in the
    denominator (here the norms, which no phase trained)."""
    from safetensors.numpy import save_file

    truth = write_run(tmp_path / "s" / "r0", np.random.default_rng(3), method="full", cpt="c", norms=True)
    rng = np.random.default_rng(4)
    tensors, sq, moved = {}, 0.0, 0.0
    for (layer, block, module), d in truth["module_drift"].items():
        name = (
            "model.embed_tokens.weight"
            if layer < 0
            else f"model.layers.{layer}.{'self_attn' if block == 'attn' else 'mlp'}.{module}.weight"
        )
        tensors[name] = rng.normal(size=(4, 4)).astype(np.float32)
        n2 = float(np.sum(tensors[name].astype(np.float64) ** 2))
        sq, moved = sq + n2, moved + d**2 * n2
    for layer in range(LAYERS):
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = np.ones(4, dtype=np.float32)
        sq += 4.0
    (tmp_path / "s" / "r0" / "merged").mkdir()
    save_file(tensors, str(tmp_path / "s" / "r0" / "merged" / "model.safetensors"))
    for i in range(1, 3):
        write_run(tmp_path / "s" / f"r{i}", np.random.default_rng(10 + i), method="full", cpt=f"c{i}", norms=True)
    res = relate_runs(tmp_path / "s")
    assert res.design.loc["r0", "total_drift_from"] == "checkpoint"
    assert res.design.loc["r0", "total_drift"] == pytest.approx(math.sqrt(moved / sq), rel=1e-6)
    assert res.design.loc["r1", "total_drift_from"] == "records"
    assert any("1 run(s) from checkpoint" in n and "2 run(s) from records" in n for n in res.notes)


# ------------------------------------------------------------------------------------------ command line, config


def test_cli_writes_tables_and_heatmaps(design, tmp_path, capsys):
    root, _, _ = design
    out = tmp_path / "relate"
    assert (
        cli.main(
            [
                "relate",
                str(root / "study_a"),
                str(root / "study_b"),
                "--out",
                str(out),
                "--features",
                "final_drift",
                "--phases",
                "sft",
                "--outcomes",
                "retention_drop",
                "--top",
                "3",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "20 runs in 7 CPT groups" in text and "method=full" in text and "final_drift" in text
    table = pd.read_csv(out / "relate.csv", keep_default_na=False, na_values=[""])
    assert len(table) == 6 * (LAYERS * 2 + 1) and set(table["feature"]) == {"final_drift"}
    assert (out / "features.parquet").is_file()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["partial_final_drift_sft_retention_drop.png", "rho_final_drift_sft_retention_drop.png"]
    assert cli.main(["relate", str(tmp_path / "missing")]) == 2
    assert "no sweep folder" in capsys.readouterr().err
    assert cli.main(["relate"]) == 2
    assert "expected sweep folders or one feature table" in capsys.readouterr().err


def test_config_checks():
    with pytest.raises(ValueError, match="min_runs must be an int >= 3"):
        RelateConfig(min_runs=2)
    with pytest.raises(ValueError, match="alpha must lie in"):
        RelateConfig(alpha=1.5)
    with pytest.raises(ValueError, match="permutations must be an int >= 100"):
        RelateConfig(permutations=10)
    f = run_features(pd.DataFrame(columns=list(COLUMNS)))
    assert f.empty and list(f.columns) == ["feature", "phase", "layer", "block", "value"]


def test_harness_drops_are_outcomes_by_default(tmp_path):
    """A summary with lm-evaluation-harness scores adds drop.lm_eval/<task>/<metric> (cpt - sft) to the outcomes."""
    rng = np.random.default_rng(1)
    drops = {}
    for i in range(6):
        run = tmp_path / f"r{i}"
        write_run(run, rng)
        summary = json.loads((run / "summary.json").read_text())
        summary["cpt"].update({"lm_eval/arc_easy/acc": 0.6, "lm_eval/arc_easy/acc_stderr": 0.05})
        summary["sft"].update({"lm_eval/arc_easy/acc": 0.6 - i / 100, "lm_eval/arc_easy/acc_stderr": 0.05})
        (run / "summary.json").write_text(json.dumps(summary))
        drops[f"r{i}"] = i / 100
    res = relate_runs(tmp_path)
    assert "drop.lm_eval/arc_easy/acc" in res.outcomes.columns
    assert not any(c.endswith("_stderr") for c in res.outcomes.columns)
    assert res.outcomes["drop.lm_eval/arc_easy/acc"].to_dict() == pytest.approx(drops)


def test_the_notes_count_each_stratum_s_passing_tests_plain_and_given_the_drift():
    from layerprobe.analyse.relate import RelateConfig, _stratum_notes

    nan = float("nan")
    table = pd.DataFrame(
        {
            "stratum": ["all"] * 4 + ["method=lora"] * 3,
            "p": [0.001, 0.2, nan, 0.01, 0.5, 0.6, 0.7],
            "q": [0.004, 0.3, nan, 0.02, 0.6, 0.6, 0.7],
            "partial_q": [0.5, 0.01, nan, 0.03, 0.6, 0.6, 0.7],
        }
    )
    assert _stratum_notes(table, RelateConfig()) == [
        "all: 2 of 3 tests pass q < 0.05 (Benjamini-Hochberg within the stratum); controlling for the total SFT "
        "drift (partial rho), 2 pass",
        "method=lora: no cell passes q < 0.05 (Benjamini-Hochberg over 3 tests): no claim",
    ]
