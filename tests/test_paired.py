"""Claims with the unit of replication as the unit (layerprobe.analyse.paired), against plain computations."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from layerprobe.analyse.paired import (
    Arm,
    ClaimsConfig,
    compare,
    compare_family,
    holm,
    sweep_arm,
    sweep_results,
    unit_test,
    write_claims,
)
from layerprobe.core.stats import mcnemar_p, t_power, units_needed


def _run(folder, qa, logodds, phase="sft"):
    (folder / "eval").mkdir(parents=True)
    rows = [{"kind": "qa", "prompt": f"q{i}", "correct": bool(v)} for i, v in enumerate(qa)]
    rows += [
        {"kind": "instruction", "prompt": f"i{i}", "correct": True, "first": True, "eos": True, "style_logodds": v}
        for i, v in enumerate(logodds)
    ]
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
    assert p == pytest.approx(min(1.0, 2 * sum(math.comb(n, k) for k in range(2)) / 2**n))
    assert mcnemar_p(xa, xa)[0] == 1.0


def test_unit_test_is_the_paired_t_with_tost_and_power_from_plain_formulas():
    from statsmodels.stats.weightstats import ttost_paired

    a, b = np.array([0.81, 0.64, 0.90, 0.72]), np.array([0.70, 0.66, 0.79, 0.60])
    d, n, m = a - b, 4, 0.05
    out = unit_test(d, margin=m)
    se = d.std(ddof=1) / math.sqrt(n)
    assert out["diff"] == pytest.approx(d.mean()) and out["sd"] == pytest.approx(d.std(ddof=1))
    assert out["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    half = stats.t.ppf(0.975, n - 1) * se
    assert (out["lo"], out["hi"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert out["p_tost"] == pytest.approx(ttost_paired(a, b, -m, m)[0])
    # the detectable difference: power of the two-sided t at mde is 0.8 (noncentral t by hand)
    crit = stats.t.ppf(0.975, n - 1)
    nc = out["mde"] / out["sd"] * math.sqrt(n)
    assert stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc) == pytest.approx(0.8, abs=1e-4)
    # units needed: the first n whose power reaches 0.8 at the observed standardised difference
    eff = abs(d.mean()) / d.std(ddof=1)

    def power(k):
        c, ncp = stats.t.ppf(0.975, k - 1), eff * math.sqrt(k)
        return stats.nct.sf(c, k - 1, ncp) + stats.nct.cdf(-c, k - 1, ncp)

    k = int(out["units_needed"])
    assert power(k) >= 0.8 > power(k - 1)
    assert units_needed(0.0) == math.inf


def test_t_power_is_the_integral_and_stays_finite_where_scipys_noncentral_t_fails():
    from scipy import integrate
    from statsmodels.stats.power import TTestPower

    def by_integral(effect, n, alpha):  # P(|T| > crit), T = (Z + effect sqrt(n)) / sqrt(V / df), V ~ chi2(df)
        df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)
        f = lambda v: (
            (
                stats.norm.sf(crit * math.sqrt(v / df) - effect * math.sqrt(n))
                + stats.norm.cdf(-crit * math.sqrt(v / df) - effect * math.sqrt(n))
            )
            * stats.chi2.pdf(v, df)
        )
        return integrate.quad(f, 0, math.inf, limit=200)[0]

    for effect, n, alpha in [(0.5, 10, 0.05), (1.2, 4, 0.05), (2.0, 3, 0.01), (0.3, 40, 0.001)]:
        assert t_power(effect, n, alpha) == pytest.approx(by_integral(effect, n, alpha), abs=1e-6)
    # scipy's noncentral t gives NaN here (a Holm level of a family of 47, a large effect); the power is not
    assert math.isnan(TTestPower().power(7.104, 4, 0.05 / 47))
    assert t_power(7.104, 4, 0.05 / 47) == pytest.approx(by_integral(7.104, 4, 0.05 / 47), abs=1e-6)
    powers = [t_power(7.104, n, 0.05 / 47) for n in range(2, 8)]
    assert all(np.isfinite(powers)) and powers == sorted(powers)
    assert units_needed(7.104, 0.05 / 47) == units_needed(7.104 * (1 + 1e-12), 0.05 / 47)


def test_unit_test_without_spread_uses_the_exact_sign_test_and_one_unit_decides_nothing():
    out = unit_test([0.2, 0.2, 0.2], margin=0.05)
    assert out["test"].startswith("sign test") and out["p"] == pytest.approx(0.25)
    assert out["p_tost"] == pytest.approx(1.0)  # every unit is outside +-0.05
    assert out["units_needed"] == 6  # 2 * 0.5^6 = 0.031 < 0.05 <= 2 * 0.5^5
    same = unit_test([0.0, 0.0, 0.0], margin=0.05)
    assert same["p"] == 1.0 and same["p_tost"] == pytest.approx(0.125)  # one-sided sign tests, 0.5^3
    one = unit_test([0.4], margin=0.05)
    assert math.isnan(one["p"]) and one["n_units"] == 1


def test_compare_reads_unit_means_and_describes_items_with_mcnemar(tmp_path):
    qa_a = {1: [1, 1, 1, 0, 1, 1], 2: [1, 1, 0, 0, 1, 1], 3: [1, 1, 1, 1, 1, 0]}
    qa_b = {1: [0, 1, 0, 0, 1, 0], 2: [1, 0, 0, 0, 1, 0], 3: [0, 1, 1, 0, 0, 0]}
    lo_a, lo_b = {1: [2.0, 3.0], 2: [1.0, 4.0], 3: [0.0, 1.0]}, {1: [1.0, 1.0], 2: [1.5, 2.0], 3: [1.0, 1.0]}
    a = Arm({s: _run(tmp_path / f"a{s}", qa_a[s], lo_a[s]) for s in (1, 2, 3)})
    b = Arm({s: _run(tmp_path / f"b{s}", qa_b[s], lo_b[s]) for s in (1, 2, 3)})
    out = compare(a, b, "qa_acc")
    xa, xb = np.array([qa_a[s] for s in (1, 2, 3)]), np.array([qa_b[s] for s in (1, 2, 3)])
    per_seed = (xa - xb).mean(axis=1)
    assert out["diff"] == pytest.approx(per_seed.mean()) and out["n_units"] == 3
    assert out["p"] == pytest.approx(stats.ttest_1samp(per_seed, 0).pvalue)
    assert out["seed_diffs"] == " ".join(f"{v:+.3f}" for v in per_seed)
    assert out["p_items"] == pytest.approx(mcnemar_p(xa, xb)[0])  # descriptive only
    # the same from the sweep's answers table alone, once the run folders are gone
    import shutil

    from layerprobe.analyse.answers import ANSWERS_TABLE, answers_table

    answers_table(tmp_path, [f"{x}{s}" for x in "ab" for s in (1, 2, 3)]).to_parquet(tmp_path / ANSWERS_TABLE)
    for s in (1, 2, 3):
        shutil.move(tmp_path / f"a{s}" / "eval", tmp_path / f"gone-a{s}")
    again = compare(a, b, "qa_acc")
    assert again["p_items"] == out["p_items"] and again["diff"] == pytest.approx(out["diff"])
    for s in (1, 2, 3):
        shutil.move(tmp_path / f"gone-a{s}", tmp_path / f"a{s}" / "eval")
    cont = compare(a, b, "style_logodds")
    d = [np.mean(lo_a[s]) - np.mean(lo_b[s]) for s in (1, 2, 3)]
    assert cont["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue) and math.isnan(cont["p_items"])
    with pytest.raises(ValueError, match="share no unit"):
        compare(a, Arm({7: tmp_path / "b1"}), "qa_acc")
    with pytest.raises(ValueError, match="metric must be one of"):
        compare(a, b, "qa")
    with pytest.raises(ValueError, match="no equivalence margin"):
        compare(a, b, "qa_acc", ClaimsConfig(margins={"cloze_acc": 0.05}))


def test_compare_from_a_results_table_needs_no_run_folders(tmp_path):
    res = pd.DataFrame(
        {
            "cell": [f"{c},seed={s}" for c in "ab" for s in (1, 2, 3)],
            "condition": list("aaabbb"),
            "seed": [1, 2, 3] * 2,
            "sft.cloze_acc": [0.9, 0.8, 0.95, 0.7, 0.75, 0.6],
            "cpt.cloze_acc": [1.0] * 6,
        }
    )
    a, b = sweep_arm(res, tmp_path, condition="a"), sweep_arm(res, tmp_path, condition="b")
    out = compare(a, b, "cloze_acc")
    d = np.array([0.2, 0.05, 0.35])
    assert out["diff"] == pytest.approx(d.mean()) and out["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert math.isnan(out["p_items"])  # no answers on disk: no item-level description
    before = sweep_arm(res, tmp_path, "cpt", condition="a")
    assert compare(a, before, "cloze_acc")["diff"] == pytest.approx(np.mean([0.9, 0.8, 0.95]) - 1.0)


def test_family_verdicts_use_holm_within_each_family(tmp_path):
    base, jitter = 0.5, [0.01, -0.01, 0.005, 0.0, -0.005]
    noise = [0.3, -0.25, 0.1, -0.2, 0.05]
    res = pd.DataFrame(
        [
            {"cell": f"{c},seed={s}", "condition": c, "seed": s, "sft.qa_acc": v}
            for s in range(1, 6)
            for c, v in (
                ("base", base),
                ("big", 0.8 + jitter[s - 1]),
                ("same", base + jitter[s - 1]),
                ("noisy", base + noise[s - 1]),
            )
        ]
    )
    arm = {c: sweep_arm(res, tmp_path, condition=c) for c in ("base", "big", "same", "noisy")}
    claims = [
        {"claim": f"{c} - base", "family": fam, "metric": "qa_acc", "a": arm[c], "b": arm["base"]}
        for c, fam in (("big", "f1"), ("same", "f1"), ("noisy", "f2"))
    ]
    fam = compare_family(claims)
    for _name, idx in fam.groupby("family").groups.items():
        assert fam.loc[idx, "p_holm"].tolist() == pytest.approx(holm(fam.loc[idx, "p"]).tolist())
        assert fam.loc[idx, "p_tost_holm"].tolist() == pytest.approx(holm(fam.loc[idx, "p_tost"]).tolist())
    assert fam["verdict"].tolist() == ["differs", "equivalent", "inconclusive"]
    d_big = np.array([0.8 + j - 0.5 for j in jitter])  # power figures at alpha / 2 in the family of two claims
    ref = unit_test(d_big, 0.05, alpha=0.025)
    assert (fam["mde"][0], fam["units_needed"][0]) == pytest.approx((ref["mde"], ref["units_needed"]))
    assert fam["holds"].tolist() == [True, False, False]
    # a claim not finished on enough units is listed, untested, and left out of its family
    part = compare_family(claims[:1] + [{**claims[1], "b": Arm({1: arm["base"].runs[1]})}], min_units=3)
    assert part["missing"].tolist() == ["", "1 of 3 units finished"] and math.isnan(part["p_holm"][1])
    assert part["p_holm"][0] == pytest.approx(part["p"][0]) and part["verdict"][1] == "missing"
    # a metric these runs never measured (no results column, no answers) is listed as missing, not an error
    unmeasured = compare_family(claims[:1] + [{**claims[0], "metric": "cloze_heldout_acc"}])
    assert unmeasured["missing"].tolist() == ["", "cloze_heldout_acc not measured in these runs"]
    assert unmeasured["p_holm"][0] == pytest.approx(unmeasured["p"][0])
    line = write_claims(fam, tmp_path / "out")
    assert line.startswith("3 of 3 claims tested: 1 differs, 1 equivalent, 1 inconclusive")
    back = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert back["verdict"].tolist() == fam["verdict"].tolist()
    assert (tmp_path / "out" / "claims.png").stat().st_size > 0


def _simulate(rng, n_pairs, n_units=3, n_items=57, unit_sd=0.9, effect=0.0):
    """Pairs of arms on the same items: item difficulty (logit) shared by both arms, a random shift per (arm,
    unit) -- the seed-to-seed spread of a training run -- and 0/1 answers drawn per item. ``effect`` shifts arm a
    (logit). unit_sd 0.9 gives a rate SD between units of about 0.13-0.15, as the SmolLM2 studies show."""
    for _ in range(n_pairs):
        item = rng.normal(1.0, 1.5, n_items)
        shift_a, shift_b = rng.normal(0, unit_sd, (n_units, 1)), rng.normal(0, unit_sd, (n_units, 1))
        xa = rng.random((n_units, n_items)) < 1 / (1 + np.exp(-(item + shift_a + effect)))
        xb = rng.random((n_units, n_items)) < 1 / (1 + np.exp(-(item + shift_b)))
        yield xa.astype(float), xb.astype(float)


def _old_rule(xa, xb, rng, n_boot=1000):
    """The rule this project used before: exact McNemar over all (seed, item) pairs and a percentile bootstrap
    over seeds then items that excludes 0."""
    d = xa - xb
    rows = rng.integers(0, d.shape[0], (n_boot, d.shape[0]))
    cols = rng.integers(0, d.shape[1], (n_boot, d.shape[1]))
    boot = d[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return mcnemar_p(xa, xb)[0] < 0.05 and (lo > 0 or hi < 0)


@pytest.mark.slow
def test_verdict_is_calibrated_under_the_null_and_the_old_rule_is_not():
    rng = np.random.default_rng(2026)
    pairs = list(_simulate(rng, 400))
    spread = np.mean([xa.mean(axis=1).std(ddof=1) for xa, _ in pairs])
    assert 0.10 < spread < 0.18  # the seed-level spread the studies show
    new = np.mean([unit_test(xa.mean(axis=1) - xb.mean(axis=1))["p"] < 0.05 for xa, xb in pairs])
    old = np.mean([_old_rule(xa, xb, rng) for xa, xb in pairs])
    assert new <= 0.07, f"the unit-level test fired in {new:.1%} of null pairs"
    assert old > 0.07, f"the old rule fired in only {old:.1%} of null pairs"


@pytest.mark.slow
def test_verdict_has_power_on_a_planted_effect():
    rng = np.random.default_rng(7)
    # +1.5 logit, about +0.18 accuracy with a seed SD of ~0.13: found in most of 200 designs with 8 units
    hits = [
        unit_test(xa.mean(axis=1) - xb.mean(axis=1))["p"] < 0.05
        for xa, xb in _simulate(rng, 200, n_units=8, effect=1.5)
    ]
    assert np.mean(hits) >= 0.7


def test_sweep_arm_picks_one_cell_per_unit_and_adds_the_world_when_it_varies(tmp_path):
    results = pd.DataFrame(
        {"cell": ["mlp,seed=1", "mlp,seed=2", "all,seed=1"], "condition": ["mlp", "mlp", "all"], "seed": [1, 2, 1]}
    )
    arm = sweep_arm(results, tmp_path, condition="mlp")
    assert arm.runs == {1: tmp_path / "mlp,seed=1", 2: tmp_path / "mlp,seed=2"} and arm.phase == "sft"
    assert sweep_arm(results, tmp_path, condition="none").runs == {}  # not finished yet
    assert sweep_results(tmp_path).empty and sweep_arm(sweep_results(tmp_path), tmp_path, condition="mlp").runs == {}
    with pytest.raises(ValueError, match="several cells per unit"):
        sweep_arm(results, tmp_path)
    with pytest.raises(ValueError, match="no column"):
        sweep_arm(results, tmp_path, alpha=8)
    worlds = pd.DataFrame({"cell": ["w1s1", "w2s1"], "condition": ["x", "x"], "seed": [1, 1], "toy.seed": [1, 2]})
    assert set(sweep_arm(worlds, tmp_path, condition="x").runs) == {(1, 1), (2, 1)}


def test_claims_config_checks_its_fields():
    with pytest.raises(ValueError, match="positive number"):
        ClaimsConfig(margins={"qa_acc": -0.1})
    with pytest.raises(ValueError, match="0 < alpha < power < 1"):
        ClaimsConfig(alpha=5)
