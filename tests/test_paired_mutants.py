"""Claims (layerprobe.analyse.paired) against plain references and exact messages: each test fails for a mutant that
survived tests/test_paired.py (benchmarks/results/mutation_survivors.md)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from layerprobe.analyse.answers import ITEM_METRICS
from layerprobe.analyse.paired import (
    Arm,
    ClaimsConfig,
    compare,
    compare_family,
    measured,
    paired_items,
    summary_line,
    sweep_arm,
    sweep_results,
    unit_columns,
    unit_means,
    unit_of,
    unit_test,
    verdicts,
    write_claims,
)
from layerprobe.core.stats import detectable, mcnemar_p, sign_p, units_needed


def _answers(folder, phase="sft", **kinds):
    """An eval/<phase>-answers.jsonl with one row per (kind, prompt, correct)."""
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    rows = [{"kind": k, "prompt": p, "correct": c} for k, items in kinds.items() for p, c in items.items()]
    (folder / "eval" / f"{phase}-answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_claims_config_from_yaml_reads_its_three_keys_and_names_the_unknown_ones(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("alpha: 0.01\npower: 0.9\nmargins: {qa_acc: 0.1}\n")
    assert ClaimsConfig.from_yaml(str(path)) == ClaimsConfig(alpha=0.01, power=0.9, margins={"qa_acc": 0.1})
    path.write_text("")  # an empty file: the defaults
    assert ClaimsConfig.from_yaml(path) == ClaimsConfig()
    path.write_text("alpha: 0.01\nlevel: 3\nbeta: 1\n")
    with pytest.raises(ValueError) as e:
        ClaimsConfig.from_yaml(path)
    assert str(e.value) == f"{path}: unknown keys ['beta', 'level']; a claims config has alpha, power and margins"


def test_claims_config_needs_alpha_below_power_inside_0_1_and_positive_margins():
    for alpha, power in ((0, 0.8), (1, 0.8), (0.05, 0), (0.05, 1), (-0.1, 0.8), (0.05, 1.5), (0.5, 0.5), (0.8, 0.2)):
        with pytest.raises(ValueError) as e:
            ClaimsConfig(alpha=alpha, power=power)
        assert str(e.value) == (
            f"claims need 0 < alpha < power < 1, got alpha={alpha}, power={power}; e.g. alpha 0.05, power 0.8"
        )
    ClaimsConfig(alpha=0.001, power=0.999)
    for bad in (0, -1, "0.05", None):
        with pytest.raises(ValueError) as e:
            ClaimsConfig(margins={"qa_acc": 0.05, "eos_rate": bad})
        assert str(e.value) == (
            f"each equivalence margin must be a positive number, got {{'eos_rate': {bad!r}}}; e.g. qa_acc: 0.05"
        )
    config = ClaimsConfig(margins={"qa_acc": 1, "cloze_acc": 0.5})  # whole numbers are numbers too
    assert config.margin("qa_acc") == 1.0 and isinstance(config.margin("qa_acc"), float)
    with pytest.raises(ValueError) as e:
        config.margin("eos_rate")
    assert str(e.value) == (
        "no equivalence margin for 'eos_rate'; state one in the claims config (margins: {eos_rate: ...}), "
        "known: qa_acc, cloze_acc"
    )


def test_unit_means_take_the_results_column_of_the_phase_else_the_answers(tmp_path):
    a1 = _answers(tmp_path / "a1", qa={"q1": True, "q2": False, "q3": False, "q4": False})
    a2 = _answers(tmp_path / "a2", phase="cpt", qa={"q1": True, "q2": True})
    results = {1: {"sft.qa_acc": math.nan, "cpt.qa_acc": 0.9}, 2: {"sft.qa_acc": 0.75}}
    sft = unit_means(Arm({1: a1, 2: a2}, "sft", results), "qa_acc")
    assert sft.name == "qa_acc" and sft.to_dict() == {1: 0.25, 2: 0.75}  # unit 1: NaN in the table, the answers
    cpt = unit_means(Arm({1: a1, 2: a2}, "cpt", results), "qa_acc")
    assert cpt.to_dict() == {1: 0.9, 2: 1.0}  # unit 2: no cpt column, the cpt answers
    empty = unit_means(Arm({}), "qa_acc")
    assert empty.empty and empty.dtype == np.float64
    with pytest.raises(ValueError) as e:
        unit_means(Arm({1: a1}), "qa")
    assert str(e.value) == f"metric must be one of {', '.join(ITEM_METRICS)}, got 'qa'"


def test_measured_needs_a_value_or_answers_of_the_metric_in_every_run(tmp_path):
    run = _answers(tmp_path / "r", qa={"q1": True})
    assert measured(Arm({1: run}), "qa_acc")
    assert not measured(Arm({1: run}), "cloze_acc")  # answers, none of them cloze
    assert not measured(Arm({1: run, 2: tmp_path / "gone"}), "qa_acc")  # no answers file
    assert measured(Arm({1: run, 2: tmp_path / "gone"}, results={2: {"sft.qa_acc": 0.5}}), "qa_acc")
    assert not measured(Arm({2: tmp_path / "gone"}, results={2: {"sft.qa_acc": math.nan}}), "qa_acc")
    assert not measured(Arm({2: tmp_path / "gone"}, results={2: {"cpt.qa_acc": 0.5}}), "qa_acc")


def test_paired_items_keep_the_shared_units_and_the_items_every_run_has(tmp_path):
    a = Arm(
        {
            1: _answers(tmp_path / "a1", qa={"q1": True, "q2": False, "q3": True}),
            2: _answers(tmp_path / "a2", qa={"q1": False, "q2": True, "q3": True}),
            3: _answers(tmp_path / "a3", qa={"q1": True}),
        }
    )
    b = Arm(
        {
            1: _answers(tmp_path / "b1", qa={"q2": True, "q3": False, "q4": True}),
            2: _answers(tmp_path / "b2", qa={"q3": True, "q2": False, "q1": True}),
        }
    )
    xa, xb, units = paired_items(a, b, "qa_acc")
    assert units == [1, 2]
    assert xa.tolist() == [[0.0, 1.0], [1.0, 1.0]] and xb.tolist() == [[1.0, 0.0], [0.0, 1.0]]  # items q2, q3
    with pytest.raises(ValueError) as e:
        paired_items(a, Arm({7: tmp_path / "b1", 8: tmp_path / "b2"}), "qa_acc")
    assert str(e.value) == "the arms share no unit: [1, 2, 3] vs [7, 8]"
    c = Arm({1: _answers(tmp_path / "c1", qa={"q9": True})})
    with pytest.raises(ValueError) as e:
        paired_items(a, c, "qa_acc")
    assert str(e.value) == "the arms share no qa_acc item"


def test_unit_test_with_fewer_than_two_units_or_no_spread_states_what_it_can(tmp_path):
    none = unit_test([])
    assert none["n_units"] == 0 and none["test"] == "none: fewer than 2 units"
    assert all(math.isnan(none[k]) for k in ("diff", "sd", "lo", "hi", "p", "p_tost", "mde", "units_needed"))
    one = unit_test([-0.3], margin=0.05)
    assert one["diff"] == -0.3 and all(math.isnan(one[k]) for k in ("sd", "lo", "hi", "p", "p_tost"))
    # two units alike up to float rounding: no t statistic, the sign test, and the interval is the point
    two = unit_test([0.2, 0.2 + 1e-12], margin=0.05)
    assert two["test"] == "sign test (no spread between units)" and two["sd"] == 0.0
    assert two["lo"] == two["hi"] == two["diff"] == pytest.approx(0.2, abs=1e-11)
    assert two["p"] == sign_p(np.array([0.2, 0.2]))
    assert two["units_needed"] == 6  # 2 * 0.5^6 = 0.031 < 0.05 <= 2 * 0.5^5
    assert unit_test([0.2, 0.2], alpha=0.01)["units_needed"] == 8  # 2 * 0.5^8 = 0.0078 < 0.01 <= 2 * 0.5^7
    assert unit_test([0.2, 0.2], alpha=0.25)["units_needed"] == 4  # p < alpha is strict: 2 * 0.5^3 = 0.25 is not
    assert unit_test([0.1, 0.3], alpha=0.5)["test"] == "paired t"  # two units with spread have a t statistic
    zero = unit_test([0.0, 0.0])
    assert math.isnan(zero["units_needed"]) and math.isnan(zero["p_tost"])  # no margin: no equivalence test


def test_unit_test_power_figures_use_the_given_alpha_power_and_the_absolute_difference():
    from statsmodels.stats.weightstats import ttost_paired

    d = np.array([-0.3, -0.1, -0.25, -0.05, -0.2, -0.15])
    sd = d.std(ddof=1)
    out = unit_test(d, 0.2, alpha=0.02, power=0.9)
    # a negative difference: the test against -m is the larger p of the two
    assert out["p_tost"] == pytest.approx(ttost_paired(d, np.zeros_like(d), -0.2, 0.2)[0])
    assert out["test"] == "paired t" and out["sd"] == pytest.approx(sd)
    assert out["mde"] == pytest.approx(detectable(6, 0.02, 0.9) * sd)
    assert out["units_needed"] == units_needed(abs(d.mean()) / sd, 0.02, 0.9)


def _arm(tmp_path, name, values, phase="sft"):
    return Arm(
        {u: tmp_path / f"{name}{u}" for u in values}, phase, {u: {f"{phase}.qa_acc": v} for u, v in values.items()}
    )


def test_compare_reports_both_arms_the_units_and_the_rates_at_a_bound(tmp_path):
    a = _arm(tmp_path, "a", {1: 1.0, 2: 0.75, 3: 0.0, 5: 0.5})
    b = _arm(tmp_path, "b", {1: 0.25, 2: 1.0, 3: 0.25, 4: 0.0})
    out = compare(a, b, "qa_acc")
    assert (out["metric"], out["a"], out["b"], out["n_units"]) == ("qa_acc", 1.75 / 3, 0.5, 3)
    assert out["units"] == "1 2 3" and out["seed_diffs"] == "+0.750 -0.250 -0.250"
    assert out["at_bound"] == 3  # a: 1.0 and 0.0, b: 1.0 (unit 4's 0.0 is not shared)
    assert math.isnan(out["p_items"]) and math.isnan(out["a_only"]) and math.isnan(out["b_only"])
    d = [0.75, -0.25, -0.25]
    assert out["mde"] == pytest.approx(unit_test(d, 0.05, 0.05, 0.8)["mde"])  # one claim: alpha itself
    assert compare(a, b, "qa_acc", family_size=4)["mde"] == pytest.approx(unit_test(d, 0.05, 0.05 / 4, 0.8)["mde"])
    config = ClaimsConfig(alpha=0.1, power=0.9, margins={"qa_acc": 0.2})
    out = compare(a, b, "qa_acc", config)
    assert (out["p_tost"], out["mde"]) == pytest.approx(
        (unit_test(d, 0.2)["p_tost"], unit_test(d, 0.2, 0.1, 0.9)["mde"])
    )
    logodds = Arm(a.runs, "sft", {u: {"sft.style_logodds": 1.0} for u in a.runs})
    assert "at_bound" not in compare(logodds, logodds, "style_logodds")  # not a rate


def test_compare_counts_items_only_one_arm_got_right_in_the_arms_phase(tmp_path):
    qa_a, qa_b = {"q1": True, "q2": True, "q3": False}, {"q1": False, "q2": True, "q3": True}
    a = Arm({u: _answers(tmp_path / f"a{u}", "cpt", qa=qa_a) for u in (1, 2)}, "cpt")
    b = Arm({u: _answers(tmp_path / f"b{u}", "cpt", qa=qa_b) for u in (1, 2, 3)}, "cpt")
    out = compare(a, b, "qa_acc")
    xa, xb = np.array([[1, 1, 0], [1, 1, 0]]), np.array([[0, 1, 1], [0, 1, 1]])
    assert (out["p_items"], out["a_only"], out["b_only"]) == mcnemar_p(xa, xb)
    assert (out["a_only"], out["b_only"]) == (2, 2)


def test_verdicts_need_p_below_alpha_and_nan_decides_nothing():
    assert verdicts([0.05, 0.049, math.nan, 0.2, math.nan], [0.01, 0.5, 0.049, 0.05, math.nan]) == [
        "equivalent",
        "differs",
        "equivalent",
        "inconclusive",
        "inconclusive",
    ]
    assert verdicts([0.05, 0.2], [0.5, 0.1], alpha=0.1) == ["differs", "inconclusive"]


def test_summary_line_counts_the_tested_claims_by_verdict():
    table = pd.DataFrame(
        {
            "verdict": ["differs", "differs", "inconclusive", "missing"],
            "missing": ["", "", "", "1 of 3 units finished"],
        }
    )
    assert summary_line(table) == "3 of 4 claims tested: 2 differs, 0 equivalent, 1 inconclusive"


def test_compare_family_lists_missing_claims_in_place_and_tests_the_rest(tmp_path):
    a = _arm(tmp_path, "a", {1: 0.9, 2: 0.8, 3: 0.7})
    b = _arm(tmp_path, "b", {1: 0.5, 2: 0.45, 3: 0.45})
    cloze = Arm(b.runs, "sft", {u: {"sft.cloze_acc": 0.5} for u in b.runs})  # measured in b only
    claims = [
        {"claim": "none", "metric": "cloze_acc", "a": a, "b": b},
        {"claim": "two", "metric": "qa_acc", "a": a, "b": _arm(tmp_path, "c", {1: 0.5, 2: 0.4})},
        {"claim": "half", "metric": "cloze_acc", "a": a, "b": cloze},
        {"claim": "all", "metric": "qa_acc", "a": a, "b": b},
    ]
    table = compare_family(claims, min_units=3)
    assert table["claim"].tolist() == ["none", "two", "half", "all"] and table["family"].tolist() == ["all"] * 4
    assert table["metric"].tolist() == ["cloze_acc", "qa_acc", "cloze_acc", "qa_acc"]
    assert table["n_units"].tolist() == [3, 2, 3, 3]
    assert table["missing"].tolist() == [
        "cloze_acc not measured in these runs",
        "2 of 3 units finished",
        "cloze_acc not measured in these runs",
        "",
    ]
    assert table["verdict"].tolist() == ["missing", "missing", "missing", "differs"]
    assert table["holds"].tolist() == [False, False, False, True]
    assert table["p_holm"][3] == pytest.approx(table["p"][3])  # the only tested claim of its family
    # a family with nothing tested yet (a sweep just started)
    for only in (claims[:1], claims[1:2]):
        early = compare_family(only, min_units=3)
        assert early["verdict"].tolist() == ["missing"] and math.isnan(early["p_holm"][0])
    # one unit is enough by default: tested, and it decides nothing
    one = compare_family([{**claims[3], "b": _arm(tmp_path, "d", {1: 0.5})}])
    assert one["missing"].tolist() == [""] and one["verdict"].tolist() == ["inconclusive"]


def test_compare_family_decides_with_the_given_config(tmp_path):
    a = _arm(tmp_path, "a", {1: 0.8, 2: 0.4, 3: 0.7})
    b = _arm(tmp_path, "b", {1: 0.5, 2: 0.5, 3: 0.5})
    d = [0.8 - 0.5, 0.4 - 0.5, 0.7 - 0.5]
    config = ClaimsConfig(alpha=0.5, margins={"qa_acc": 0.3})
    row = compare_family([{"claim": "x", "metric": "qa_acc", "a": a, "b": b}], config).iloc[0]
    ref = unit_test(d, 0.3, 0.5, 0.8)
    assert 0.05 < ref["p"] < 0.5 and row["verdict"] == "differs"  # at alpha 0.5, not at 0.05
    assert (row["p"], row["p_tost"], row["mde"]) == pytest.approx((ref["p"], ref["p_tost"], ref["mde"]))


def test_write_claims_writes_the_table_with_six_significant_digits(tmp_path, monkeypatch):
    import layerprobe.plot.study

    drawn = []
    monkeypatch.setattr(layerprobe.plot.study, "claims_panel", lambda table, path: drawn.append(path))
    table = pd.DataFrame(
        {"claim": ["x", "y"], "p": [0.0123456789, 1.5e-07], "missing": ["", ""], "verdict": ["differs", "equivalent"]}
    )
    out = tmp_path / "study" / "claims"  # its parent is not there yet
    for _ in range(2):  # the second time into the folder the first made
        line = write_claims(table, str(out))
    assert line == f"2 of 2 claims tested: 1 differs, 1 equivalent, 0 inconclusive; {out / 'claims.csv'}"
    assert (out / "claims.csv").read_text() == "claim,p,missing,verdict\nx,0.0123457,,differs\ny,1.5e-07,,equivalent\n"
    assert drawn == [out / "claims.png"] * 2
    pd.testing.assert_frame_equal(sweep_results(out.parent), pd.DataFrame())  # no results.csv: an empty table
    results = pd.DataFrame({"cell": ["x,seed=1", "x,seed=2"], "seed": [1, 2], "sft.qa_acc": [0.5, 0.75]})
    results.to_csv(out.parent / "results.csv", index=False)
    pd.testing.assert_frame_equal(sweep_results(str(out.parent)), results)


def test_sweep_arm_keeps_the_phase_the_rows_and_plain_seed_units(tmp_path):
    results = pd.DataFrame(
        {"cell": ["x,s=1", "x,s=2", "y,s=1"], "condition": ["x", "x", "y"], "seed": [1, 2, 1], "toy.seed": [5, 5, 5]}
    )
    assert unit_columns(results) == ["seed"]  # one world: the seed alone
    arm = sweep_arm(results, str(tmp_path), "cpt", condition="x")
    assert arm.phase == "cpt" and arm.runs == {1: tmp_path / "x,s=1", 2: tmp_path / "x,s=2"}
    assert arm.results == {u: results.iloc[i].to_dict() for i, u in enumerate((1, 2))}
    assert sweep_arm(pd.DataFrame(), tmp_path, "cpt") == Arm({}, "cpt")
    assert unit_of({"seed": 3.0, "toy.seed": 2}, ["seed"]) == 3 and unit_of(
        {"seed": 3, "toy.seed": 2.0},
        [
            "toy.seed",
            "seed",
        ],
    ) == (2, 3)
    with pytest.raises(ValueError) as e:
        sweep_arm(results, tmp_path, lr=1)
    assert str(e.value) == "results have no column 'lr'; columns: cell, condition, seed, toy.seed"
    with pytest.raises(ValueError, match=re.escape(f"matches several cells per unit (seed) in {tmp_path}")):
        sweep_arm(results, tmp_path, seed=1)
    worlds = results.assign(**{"toy.seed": [5, 5, 6]})
    with pytest.raises(ValueError, match=re.escape("matches several cells per unit (toy.seed, seed)")):
        sweep_arm(pd.concat([worlds, worlds]), tmp_path)
