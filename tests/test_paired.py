"""Paired comparisons (layerprobe.paired) against plain computations."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from layerprobe.paired import Arm, bootstrap_diff, compare, compare_family, holm, mcnemar_p, sweep_arm, sweep_results, write_claims


def _run(folder, qa, logodds, phase="sft"):
    (folder / "eval").mkdir(parents=True)
    rows = [{"kind": "qa", "prompt": f"q{i}", "correct": bool(v)} for i, v in enumerate(qa)]
    rows += [{"kind": "instruction", "prompt": f"i{i}", "correct": True, "first": True, "eos": True,
              "style_logodds": v} for i, v in enumerate(logodds)]
    (folder / "eval" / f"{phase}-answers.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_holm_matches_the_step_down_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm(p).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.5, math.nan, 0.4])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.8) and out[2] == pytest.approx(0.8)
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    xa = np.array([1, 1, 1, 1, 1, 0, 1, 0, 0, 1])
    xb = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    p, a_only, b_only = mcnemar_p(xa, xb)
    assert (a_only, b_only) == (5, 1)
    n = 6  # two-sided exact: 2 * P(X <= 1), X ~ Bin(6, 1/2)
    assert p == pytest.approx(min(1.0, 2 * sum(math.comb(n, k) for k in range(2)) / 2 ** n))
    assert mcnemar_p(xa, xa)[0] == 1.0


def test_bootstrap_interval_is_the_normal_interval_for_many_items_and_a_point_without_spread():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, size=(1, 400))
    lo, hi = bootstrap_diff(d, np.zeros_like(d), n_boot=4000)
    half = 1.96 * d.std() / math.sqrt(d.size)
    assert lo == pytest.approx(d.mean() - half, abs=0.02) and hi == pytest.approx(d.mean() + half, abs=0.02)
    const = np.full((3, 5), 0.25)
    assert bootstrap_diff(const, np.zeros_like(const)) == pytest.approx((0.25, 0.25))


def test_compare_pairs_items_and_seeds(tmp_path):
    qa_a = {1: [1, 1, 1, 0, 1, 1], 2: [1, 1, 0, 0, 1, 1], 3: [1, 1, 1, 1, 1, 0]}
    qa_b = {1: [0, 1, 0, 0, 1, 0], 2: [1, 0, 0, 0, 1, 0], 3: [0, 1, 1, 0, 0, 0]}
    lo_a, lo_b = [2.0, 3.0, 1.0, 4.0], [1.0, 1.0, 1.5, 2.0]
    a = Arm({s: _run(tmp_path / f"a{s}", qa_a[s], lo_a) for s in (1, 2, 3)})
    b = Arm({s: _run(tmp_path / f"b{s}", qa_b[s], lo_b) for s in (1, 2, 3)})
    out = compare(a, b, "qa_acc")
    xa, xb = np.array([qa_a[s] for s in (1, 2, 3)]), np.array([qa_b[s] for s in (1, 2, 3)])
    assert out["diff"] == pytest.approx((xa - xb).mean())
    assert (out["n_seeds"], out["n_items"]) == (3, 6)
    assert out["seed_diffs"] == " ".join(f"{v:+.3f}" for v in (xa - xb).mean(axis=1))
    assert (out["a_only"], out["b_only"]) == (int(((xa == 1) & (xb == 0)).sum()), int(((xa == 0) & (xb == 1)).sum()))
    assert out["lo"] <= out["diff"] <= out["hi"]
    from scipy import stats

    cont = compare(a, b, "style_logodds")
    assert cont["diff"] == pytest.approx(np.mean(lo_a) - np.mean(lo_b))
    assert cont["p"] == pytest.approx(stats.wilcoxon(np.array(lo_a) - np.array(lo_b)).pvalue)
    fam = compare_family([{"claim": "qa", "a": a, "b": b, "metric": "qa_acc"},
                          {"claim": "style", "a": a, "b": b, "metric": "style_logodds"}])
    assert fam["p_holm"].tolist() == pytest.approx(holm(fam["p"]).tolist())
    assert fam["holds"].tolist() == [bool(r.p_holm < 0.05 and (r.lo > 0 or r.hi < 0)) for r in fam.itertuples()]
    # a claim whose arms are not finished on enough seeds is listed, untested, and left out of the family
    part = compare_family([{"claim": "qa", "a": a, "b": b, "metric": "qa_acc"},
                           {"claim": "later", "a": a, "b": Arm({1: b.runs[1]}), "metric": "qa_acc"}], min_seeds=3)
    assert part["missing"].tolist() == ["", "1 of 3 seeds finished"] and math.isnan(part["p_holm"][1])
    assert part["p_holm"][0] == pytest.approx(part["p"][0])
    line = write_claims(part, tmp_path / "out")
    assert line.startswith(f"1 of 2 claims tested, {int(part['holds'][0])} hold")
    assert pd.read_csv(tmp_path / "out" / "claims.csv")["claim"].tolist() == ["qa", "later"]
    assert (tmp_path / "out" / "claims.png").stat().st_size > 0


def test_compare_keeps_only_shared_seeds_and_items_and_reads_the_phase(tmp_path):
    a = Arm({1: _run(tmp_path / "a1", [1, 1, 0], [1.0]), 2: _run(tmp_path / "a2", [1, 1, 1], [1.0])})
    b = Arm({1: _run(tmp_path / "b1", [0, 1], [0.0], phase="cpt")}, phase="cpt")
    out = compare(a, b, "qa_acc")
    assert (out["n_seeds"], out["n_items"], out["diff"]) == (1, 2, pytest.approx(0.5))
    with pytest.raises(ValueError, match="share no seed"):
        compare(a, Arm({7: tmp_path / "b1"}, "cpt"), "qa_acc")
    with pytest.raises(FileNotFoundError, match="layerprobe eval"):
        compare(a, Arm({1: tmp_path / "b1"}, "sft"), "qa_acc")
    with pytest.raises(ValueError, match="metric must be one of"):
        compare(a, b, "qa")


def test_sweep_arm_picks_one_cell_per_seed(tmp_path):
    results = pd.DataFrame({"cell": ["mlp,seed=1", "mlp,seed=2", "all,seed=1"], "condition": ["mlp", "mlp", "all"],
                            "seed": [1, 2, 1]})
    arm = sweep_arm(results, tmp_path, condition="mlp")
    assert arm.runs == {1: tmp_path / "mlp,seed=1", 2: tmp_path / "mlp,seed=2"} and arm.phase == "sft"
    assert sweep_arm(results, tmp_path, condition="none").runs == {}  # not finished yet
    assert sweep_results(tmp_path).empty and sweep_arm(sweep_results(tmp_path), tmp_path, condition="mlp").runs == {}
    with pytest.raises(ValueError, match="several cells per seed"):
        sweep_arm(results, tmp_path)
    with pytest.raises(ValueError, match="no column"):
        sweep_arm(results, tmp_path, alpha=8)
