"""Sweeps (cells, resume, CPT reuse, results table) and the confidence intervals of layerprobe.core.stats."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerprobe.core.stats import paired_t, t_mean_ci, wilson
from layerprobe.sweep import collect, flatten, load_sweep, run_sweep, summarize

ROOT = Path(__file__).resolve().parents[1]

# A toy world small enough that one cell trains and evaluates in seconds.
TINY = {
    "toy": {
        "base_people": 10,
        "base_orgs": 3,
        "everyday_docs": 20,
        "cpt_people": 6,
        "cpt_orgs": 2,
        "sft_examples": 48,
        "heldout_instructions": 12,
        "hidden_size": 32,
        "num_layers": 3,
        "base_steps": 30,
    },
    "cpt": {"max_steps": 3},
    "sft": {"max_steps": 3},
    "eval": {"max_new_tokens": 6, "base": False, "loss_docs": 16},
}


# -- stats -------------------------------------------------------------------------------------------------------


def _wilson_by_roots(k, n, z=1.959963984540054):  # z = Phi^-1(0.975)
    """The Wilson bounds are the p solving (k/n - p)^2 = z^2 p (1 - p) / n: a quadratic in p."""
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    return tuple(sorted(np.roots([a, b, c]).real))


@pytest.mark.parametrize("k,n", [(8, 10), (0, 10), (10, 10), (1, 3), (37, 60), (500, 1000)])
def test_wilson_matches_the_quadratic_roots(k, n):
    lo, hi = wilson(k, n)
    ref = _wilson_by_roots(k, n)
    assert lo == pytest.approx(max(ref[0], 0.0), abs=1e-9)
    assert hi == pytest.approx(min(ref[1], 1.0), abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_published_values():
    # 8/10 and 0/10 at 95 %: the textbook values (Newcombe 1998, method 3)
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(8, 10, level=0.99)[0] < wilson(8, 10)[0]  # 99 % is wider


@pytest.mark.parametrize("bad", [(3, 2), (-1, 5), (1, 0), (1.5, 4)])
def test_wilson_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="wilson needs"):
        wilson(*bad)


def test_t_interval_matches_the_textbook_formula():
    values = [0.5, 0.7, 0.9]  # mean 0.7, sd 0.2; t(0.975, df=2) = 4.3027 from a printed table
    lo, hi = t_mean_ci(values)
    half = 4.3027 * 0.2 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((0.7 - half, 0.7 + half), abs=1e-4)
    lo, hi = t_mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])  # sd sqrt(2.5), t(0.975, df=4) = 2.7764
    assert hi - lo == pytest.approx(2 * 2.7764 * math.sqrt(2.5) / math.sqrt(5), abs=1e-4)


def test_t_interval_edge_cases_and_paired_test():
    assert all(math.isnan(v) for v in t_mean_ci([0.4]))
    assert t_mean_ci([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2))
    with pytest.raises(ValueError, match="NaN"):
        t_mean_ci([0.1, math.nan])
    with pytest.raises(ValueError, match="non-empty"):
        t_mean_ci([])
    d = [0.1, 0.3, 0.2, 0.4]  # t = mean / (sd / sqrt n) by hand; p from the t distribution with 3 df
    t = np.mean(d) / (np.std(d, ddof=1) / 2)
    from scipy import stats

    r = paired_t(d)
    assert r["n_pairs"] == 4 and r["mean_diff"] == pytest.approx(0.25)
    assert r["p"] == pytest.approx(2 * stats.t.sf(t, 3)) and r["p"] < 0.05
    assert math.isnan(paired_t([0.1, 0.1])["p"])


# -- reading a sweep ---------------------------------------------------------------------------------------------


def test_cells_are_the_product_of_conditions_grid_and_seeds(tmp_path):
    (tmp_path / "base.yaml").write_text("seed: 1\nsft: {lora_alpha: 4}\n")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        "base: base.yaml\nset: {eval.base: false, sft.r: 8}\n"
        "grid:\n  cpt.lora_alpha: [32, 128.0]\n"
        "  sft.target_modules: {A: [q_proj, up_proj], B: [q_proj]}\n"
        "conditions:\n  - {name: low, sft.learning_rate: 0.0001}\n"
        "  - {name: high, group: hi, sft.learning_rate: 0.01}\n"
        "seeds: [3, 4]\nout: somewhere\n"
    )
    sw = load_sweep(spec)
    assert len(sw.cells) == 2 * 2 * 2 * 2
    assert str(sw.out) == "somewhere" and sw.axes == ["group", "cpt.lora_alpha", "sft.target_modules"]
    c = sw.cells[0]
    assert c.name == "low,cpt.lora_alpha=32,sft.target_modules=A,seed=3"
    assert c.columns == {
        "condition": "low",
        "group": "low",
        "cpt.lora_alpha": "32",
        "sft.target_modules": "A",
        "seed": 3,
    }
    assert c.config.seed == 3 and c.config.cpt.lora_alpha == 32.0 and c.config.sft.lora_alpha == 4.0
    assert c.config.eval.base is False and c.config.sft.r == 8  # set: applies to every cell
    assert c.config.sft.target_modules == ["q_proj", "up_proj"] and c.config.sft.learning_rate == 1e-4
    last = sw.cells[-1]
    assert last.name == "high,cpt.lora_alpha=128,sft.target_modules=B,seed=4"
    assert last.columns["group"] == "hi" and last.config.sft.target_modules == ["q_proj"]
    assert len({c.name for c in sw.cells}) == len(sw.cells)
    # CPT fingerprints (what a cell may reuse): equal across SFT settings and conditions, not across CPT alpha, seed
    from types import SimpleNamespace

    from layerprobe.train.fingerprint import chain, stage_inputs

    data = SimpleNamespace(cpt_docs=["a"], sft_rows=[{"p": 1}], eval_set=[])
    keys = {chain(stage_inputs(c.config, data, "base"))["merge"] for c in sw.cells}
    assert len(keys) == 2 * 2
    # overrides from the command line reach every cell; a typo is refused with the valid keys named
    assert all(
        c.config.model == "elsewhere" and c.config.sft.r == 2
        for c in load_sweep(spec, overrides={"model": "elsewhere", "sft.r": 2}).cells
    )  # beats set:
    with pytest.raises(ValueError, match="unknown config key 'sft.lora_alpah'"):
        load_sweep({"grid": {"sft.lora_alpah": [1]}})


def test_seed_in_a_condition_is_the_cells_training_seed():
    sw = load_sweep(
        {
            "conditions": [
                {"name": "random", "sft.select": "random:5%@seed={seed}"},
                {"name": "reseed", "sft.seed": 101},
            ],
            "seeds": [1, 2],
        }
    )
    assert [c.config.sft.select for c in sw.cells[:2]] == ["random:5%@seed=1", "random:5%@seed=2"]
    assert [
        (c.config.seed, c.config.phase_seed(c.config.cpt), c.config.phase_seed(c.config.sft)) for c in sw.cells[2:]
    ] == [(1, 1, 101), (2, 2, 101)]


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"grid": {"seed": [1, 2]}}, "seeds"),
        ({"grid": {"sft.r": []}}, "no values"),
        ({"grid": {"sft.r": [4, 4.0]}}, "repeated"),
        ({"conditions": [{"sft.r": 4}]}, "name"),
        ({"conditions": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"seeds": ["x"]}, "integers"),
        ({"grids": {}}, "unknown sweep key 'grids'"),
        (
            {"grid": {"sft.r": [4]}, "labels": {"cpt.r": {"4": "four"}}},
            "labels.cpt.r: not a grid key; the grid keys are sft.r",
        ),
        ({"grid": {"sft.r": [4]}, "labels": {"sft.r": {"8": "eight"}}}, r"labels.sft.r: '8' is not one of its values"),
        ({"grid": {"sft.r": [4]}, "labels": ["sft.r"]}, "labels must map a grid key"),
        (
            {"conditions": [{"name": "a"}, {"name": "b"}], "baseline": "c"},
            "baseline 'c' is not a condition; the conditions are a, b",
        ),
    ],
)
def test_bad_sweeps_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        load_sweep(spec)


def test_labels_name_axis_values_in_figures_and_intervals_but_not_in_cells(tmp_path):
    from layerprobe.sweep import plot_sweep

    grid = {"sft.target_modules": {"A": ["q_proj", "v_proj"], "B": ["q_proj"]}}
    sw = load_sweep({"grid": grid, "seeds": [1, 2], "labels": {"sft.target_modules": {"A": "all linear"}}})
    assert [c.name for c in sw.cells][:2] == ["sft.target_modules=A,seed=1", "sft.target_modules=A,seed=2"]
    assert sw.labels == {"sft.target_modules": {"A": "all linear"}}
    table = pd.DataFrame(
        {"cell": list("wxyz"), "sft.target_modules": ["A", "A", "B", "B"], "seed": [1, 2, 1, 2], "m": [1.0, 3, 5, 9]}
    )
    ci = plot_sweep(table, ["m"], sw.axes, tmp_path, sw.labels).set_index("sft.target_modules")
    assert ci.loc["all linear", "mean"] == 2.0 and ci.loc["B", "mean"] == 7.0  # B has no label: kept as it is
    assert list(table["sft.target_modules"]) == ["A", "A", "B", "B"]  # the caller's table is untouched


def test_flatten_keeps_numbers_only():
    s = {
        "run": "x",
        "resumed": True,
        "cpt": {"cloze_acc": 0.5, "qa_acc": None, "n_probes": 4},
        "stages": {"sft": {"what": "SFT", "seconds": 2.0}},
        "wall_seconds": 9,
    }
    assert flatten(s) == {
        "cpt.cloze_acc": 0.5,
        "cpt.qa_acc": pytest.approx(math.nan, nan_ok=True),
        "cpt.n_probes": 4.0,
        "stages.sft.seconds": 2.0,
        "wall_seconds": 9.0,
    }


def test_summarize_uses_wilson_for_one_cell_and_t_over_seeds():
    t = pd.DataFrame(
        {"group": ["a", "b", "b", "b"], "sft.gozaru_rate": [0.25, 0.5, 0.7, 0.9], "sft.gozaru_rate.n": [12, 10, 10, 10]}
    )
    s = summarize(t, "sft.gozaru_rate", ["group"]).set_index("group")
    assert s.loc["a", "ci"] == "Wilson (n=12)" and (s.loc["a", "lo"], s.loc["a", "hi"]) == wilson(3, 12)
    assert s.loc["b", "mean"] == pytest.approx(0.7) and s.loc["b", "n_cells"] == 3
    lo, hi = t_mean_ci([0.5, 0.7, 0.9])  # [0.203, 1.197]: a rate's interval is clipped to [0, 1]
    assert (s.loc["b", "lo"], s.loc["b", "hi"]) == (lo, 1.0) and hi > 1 and s.loc["b", "ci"] == "t over 3 cells"
    s = summarize(t.drop(columns="sft.gozaru_rate.n"), "sft.gozaru_rate", ["group"]).set_index("group")
    assert (s.loc["b", "lo"], s.loc["b", "hi"]) == (lo, hi)  # not known to be a rate: not clipped


def test_paired_table_compares_each_condition_with_the_baseline_seed_by_seed(tmp_path):
    from layerprobe.sweep import paired_table, plot_paired

    t = pd.DataFrame(
        {
            "condition": ["base", "base", "base", "a", "a", "a", "b", "b"],
            "seed": [1, 2, 3, 1, 2, 3, 2, 9],
            "m": [0.5, 0.6, 0.7, 0.6, 0.8, 0.8, 0.1, 0.9],
        }
    )
    p = paired_table(t, ["m"], "base", ["seed"]).set_index("condition")
    assert p.loc["a", "n_pairs"] == 3 and p.loc["a", "mean_diff"] == pytest.approx((0.1 + 0.2 + 0.1) / 3)
    assert p.loc["a", "baseline_mean"] == pytest.approx(0.6) and p.loc["a", "mean"] == pytest.approx(2.2 / 3)
    assert (p.loc["a", "lo"], p.loc["a", "hi"]) == pytest.approx(t_mean_ci([0.1, 0.2, 0.1]))
    # b shares only seed 2 with the baseline: one pair, no interval
    assert p.loc["b", "n_pairs"] == 1 and p.loc["b", "mean_diff"] == pytest.approx(0.1 - 0.6)
    assert math.isnan(p.loc["b", "lo"])
    from scipy import stats

    assert p.loc["a", "p"] == pytest.approx(stats.ttest_1samp([0.1, 0.2, 0.1], 0).pvalue)
    assert p.loc["a", "p_holm"] == pytest.approx(p.loc["a", "p"])  # b's single pair has no p: a family of one
    assert p.loc["a", "verdict"] == "inconclusive" and p.loc["b", "verdict"] == "inconclusive"
    plot_paired(p.reset_index(), tmp_path / "paired.png")
    assert (tmp_path / "paired.png").stat().st_size > 1000
    plot_paired(pd.DataFrame(), tmp_path / "none.png")  # no pairs yet (baseline cells unfinished): no figure
    assert not (tmp_path / "none.png").exists()


# -- running a sweep ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LAYERPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()


@pytest.mark.slow
def test_sweep_runs_cells_reuses_cpt_resumes_and_tabulates(tmp_path, toy_cache):
    spec = {
        "base": TINY,
        "grid": {"sft.lora_alpha": [8, 32]},
        "seeds": [5],
        "out": str(tmp_path / "sw"),
        "plot": ["sft.eos_rate", ["cpt.cloze_acc", "sft.cloze_acc"]],
    }
    sw = load_sweep(spec)
    lines: list[str] = []
    t0 = time.time()
    table = run_sweep(sw, log=lines.append)
    first = time.time() - t0
    names = ["sft.lora_alpha=8,seed=5", "sft.lora_alpha=32,seed=5"]
    assert [c.name for c in sw.cells] == names
    for n in names:  # each cell is a normal run folder
        for part in ("summary.json", "config.yaml", "cpt/DONE", "merged/DONE", "sft/DONE", "eval/DONE"):
            assert (sw.out / n / part).is_file(), part
    # the second cell's CPT is the first's (same model, data, seed, cpt): linked, not retrained
    assert "reused cpt+merged of sft.lora_alpha=8,seed=5" in lines[1] and "ran sft, eval" in lines[1]
    done = json.loads((sw.out / names[1] / "cpt" / "DONE").read_text())
    assert done["reused_from"].endswith(f"{names[0]}/cpt") and done["out"].endswith(f"{names[1]}/cpt")
    for f in (sw.out / names[0] / "merged").glob("*.safetensors"):
        assert f.read_bytes() == (sw.out / names[1] / "merged" / f.name).read_bytes()
    assert (sw.out / names[1] / "config.yaml").read_text() != (sw.out / names[0] / "config.yaml").read_text()

    # results.csv: one row per cell, the varied columns and every number of summary.json
    disk = pd.read_csv(sw.out / "results.csv")
    assert list(disk["cell"]) == names and list(disk["sft.lora_alpha"]) == [8, 32]
    for _, row in disk.iterrows():
        summary = json.loads((sw.out / row["cell"] / "summary.json").read_text())
        for phase in ("cpt", "sft"):
            for metric, value in summary[phase].items():
                assert row[f"{phase}.{metric}"] == pytest.approx(value, nan_ok=True), (phase, metric)
        assert row["stages.sft.steps"] == summary["stages"]["sft"]["steps"] == 3
        assert row["retention_drop"] == pytest.approx(summary["cpt"]["cloze_acc"] - summary["sft"]["cloze_acc"])
        answers = [json.loads(x) for x in (sw.out / row["cell"] / "eval" / "sft-answers.jsonl").open()]
        assert row["sft.gozaru_rate.n"] == sum(a["kind"] == "instruction" for a in answers) == 12
        assert row["sft.gozaru_rate"] == pytest.approx(
            np.mean([a["correct"] for a in answers if a["kind"] == "instruction"])
        )
    assert table["cell"].tolist() == names
    assert (sw.figures / "sft.eos_rate.png").stat().st_size > 1000
    assert (sw.figures / "cpt.cloze_acc+sft.cloze_acc.png").is_file()
    ci = pd.read_csv(sw.out / "ci.csv")
    assert (sw.figures / "results.csv").read_text() == (sw.out / "results.csv").read_text()
    # the per-item answers of every cell, beside results.csv, as each cell's answers files hold them
    items = pd.read_parquet(sw.figures / "answers.parquet")
    for name in names:
        for phase in ("cpt", "sft"):
            rows = [json.loads(x) for x in (sw.out / name / "eval" / f"{phase}-answers.jsonl").read_text().splitlines()]
            mine = items[(items["cell"] == name) & (items["phase"] == phase)]
            assert mine["prompt"].tolist() == [r["prompt"] for r in rows]
            assert mine["correct"].astype(bool).tolist() == [bool(r["correct"]) for r in rows]
    assert set(ci["metric"]) == {"sft.eos_rate", "cpt.cloze_acc", "sft.cloze_acc"}
    assert ci["ci"].str.startswith("Wilson").all()

    # a rerun skips every finished cell
    lines.clear()
    t0 = time.time()
    again = run_sweep(load_sweep(spec), log=lines.append)
    rerun = time.time() - t0
    assert [s.endswith("finished, skipped") for s in lines[:2]] == [True, True]
    assert rerun < first / 3, (rerun, first)
    pd.testing.assert_frame_equal(again.drop(columns=["cell_seconds"]), table.drop(columns=["cell_seconds"]))
    state = json.loads((sw.out / "sweep.json").read_text())
    assert [r["cells"] for r in state["runs"]] == [2, 2] and state["cells"][names[1]]["ran"] == ["sft", "eval"]

    # another sweep with the same CPT inputs starts from this sweep's CPT (reuse_from)
    other = load_sweep(
        {
            "base": TINY,
            "conditions": [{"name": "r4", "sft.r": 4}],
            "seeds": [5],
            "out": str(tmp_path / "sw2"),
            "reuse_from": [str(sw.out)],
        }
    )
    lines.clear()
    run_sweep(other, log=lines.append)
    assert "r4,seed=5: reused cpt+merged of sft.lora_alpha=" in lines[0] and "ran sft, eval" in lines[0]
    assert json.loads((other.out / "r4,seed=5" / "summary.json").read_text())["stages"]["sft"]["steps"] == 3


def test_a_cell_folder_of_another_config_is_refused_and_the_sweep_goes_on(tmp_path, toy_cache):
    spec = {"base": TINY, "grid": {"sft.lora_alpha": [8]}, "seeds": [5], "out": str(tmp_path / "sw")}
    sw = load_sweep(spec)
    other = load_sweep({**spec, "seeds": [6]}).cells[0]
    cell_dir = sw.out / sw.cells[0].name
    (cell_dir / "cpt").mkdir(parents=True)
    (cell_dir / "config.yaml").write_text(json.dumps(other.config.to_dict()))
    (cell_dir / "cpt" / "DONE").write_text("{}")  # a finished CPT of that other config: not replaced unasked
    lines: list[str] = []
    table = run_sweep(sw, log=lines.append)
    assert "FAILED" in lines[0] and "different config" in lines[0] and "seed: 6 -> 5" in lines[0]
    assert table.empty and table.attrs["failed"] == [sw.cells[0].name]
    assert json.loads((sw.out / "sweep.json").read_text())["cells"][sw.cells[0].name]["status"] == "failed"
    assert (cell_dir / "cpt" / "DONE").read_text() == "{}" and not (cell_dir / "merged").exists()
    assert collect(sw).empty


def test_two_processes_on_one_sweep_keep_each_others_cells(tmp_path):
    from layerprobe.sweep.spec import _read_state, _write_state

    sw = load_sweep({"seeds": [1, 2], "out": str(tmp_path)})
    first, second = _read_state(tmp_path), _read_state(tmp_path)  # both read the empty state at their start
    first["cells"]["seed=1"] = {"status": "finished"}
    _write_state(sw, first)
    second["cells"]["seed=2"] = {"status": "finished"}
    _write_state(sw, second)
    assert set(_read_state(tmp_path)["cells"]) == {"seed=1", "seed=2"}
    assert not list(tmp_path.glob("*.tmp"))
    # the second process's worker then reaches seed=1, which the first finished meanwhile, and finds it done:
    # the first's record of the work (its seconds become the cell's cell_seconds) stays
    first["cells"]["seed=1"] = {"status": "finished", "ran": ["cpt", "merge", "sft", "eval"], "seconds": 700.0}
    _write_state(sw, first)
    second["cells"]["seed=1"] = {"status": "finished", "ran": [], "seconds": 5.0}
    _write_state(sw, second)
    assert _read_state(tmp_path)["cells"]["seed=1"]["seconds"] == 700.0
    # a record that ran stages replaces an older one (a cell resumed after a failure)
    second["cells"]["seed=2"] = {"status": "finished", "ran": ["eval"], "seconds": 40.0}
    _write_state(sw, second)
    assert _read_state(tmp_path)["cells"]["seed=2"]["seconds"] == 40.0


@pytest.mark.parametrize(
    "path",
    sorted(str(p.relative_to(ROOT)) for p in (ROOT / "experiments").glob("*/sweep*.yaml"))
    + ["experiments/study_a/controls_smollm2.yaml", "experiments/study_a/modules_fp32.yaml"],
)
def test_every_committed_sweep_loads(path):
    sw = load_sweep(ROOT / path)
    assert sw.cells and len({c.name for c in sw.cells}) == len(sw.cells)


def test_the_smollm2_studies_design():
    a = load_sweep(ROOT / "experiments/study_a/sweep_smollm2.yaml")
    controls = load_sweep(ROOT / "experiments/study_a/controls_smollm2.yaml")
    b = load_sweep(ROOT / "experiments/study_b/sweep_smollm2.yaml")
    assert (len(a.cells), len(controls.cells), len(b.cells)) == (24, 12, 30)
    assert all(c.config.model == "smollm2-135m" and c.config.record for sw in (a, controls, b) for c in sw.cells)
    # study B's random layers: one draw per training seed; every condition trains its layers alone (no + head)
    draws = {c.config.seed: c.config.sft.select for c in b.cells if c.columns["condition"] == "random-5pct"}
    assert draws == {s: f"random:5%@seed={s}" for s in (1, 2, 3)}
    assert not any("head" in c.config.sft.select for c in b.cells)
    # the step-size control: every weight at 3x the learning rate of the other conditions
    lr = {c.columns["condition"]: c.config.sft.learning_rate for c in b.cells}
    assert lr["all-lr3e-4"] == pytest.approx(3 * lr["all"]) and len(set(lr.values())) == 2
    # the null: the same CPT (seed) with another SFT seed
    reseed = [c.config for c in controls.cells if c.columns["condition"] == "sft-reseed"]
    assert [(c.seed, c.phase_seed(c.sft)) for c in reseed] == [(1, 101), (2, 101), (3, 101)]
