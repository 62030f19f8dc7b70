"""lm-evaluation-harness tasks on a model in memory: the shipped layerprobe_mc task equals mc_accuracy row by row,
a local task YAML runs offline, and the errors are one line."""

from __future__ import annotations

import json
import math
import sys

import pytest
from conftest import make_tiny_llama
from test_forgetting import WORDS, make_rows, make_tokenizer

from layerprobe.core.config_data import EvalConfig
from layerprobe.evaluation import harness
from layerprobe.evaluation.forgetting import choice_logprobs, mc_accuracy

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is not installed (pip install 'layerprobe[lm-eval]')"
)


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab=len(WORDS) + 15, seed=1).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_layerprobe_mc_equals_mc_accuracy_row_by_row(model, tokenizer, tmp_path):
    rows = make_rows(10, seed=3)
    scores = choice_logprobs(model, tokenizer, rows)
    best = [max(range(4), key=lambda j: (row[j][0], -j)) for row in scores]
    cfg = EvalConfig(lm_eval_tasks=["layerprobe_mc"])
    # labels = mc_accuracy's own choice: every row right for the harness too; labels = another choice: every row
    # wrong; the JSON file's own labels (random): the same accuracy from both
    for labels, expected in ((best, 1.0), ([(b + 1) % 4 for b in best], 0.0), ([r["label"] for r in rows], None)):
        labelled = [dict(r, label=y) for r, y in zip(rows, labels)]
        path = _write(tmp_path / f"valid-{expected}.json", labelled)
        ours = mc_accuracy(model, tokenizer, labelled)["acc"]
        theirs = harness.run_tasks(model, tokenizer, cfg, str(path), batch_size=3)
        assert theirs["lm_eval/layerprobe_mc/acc"] == ours
        assert expected is None or ours == expected
        assert theirs["lm_eval/layerprobe_mc/n"] == 10
        assert {"lm_eval/layerprobe_mc/acc_stderr", "lm_eval/layerprobe_mc/acc_norm"} <= set(theirs)


def test_a_local_task_yaml_runs_offline_with_a_limit(model, tokenizer, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = _write(
        tmp_path / "tiny.jsonl", [{"q": f"w{i} w{i + 1}", "choices": ["w1", "w2 w3"], "label": i % 2} for i in range(6)]
    )
    (tasks / "tiny.yaml").write_text(
        f"task: tiny_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    cfg = EvalConfig(lm_eval_tasks=["tiny_local"], lm_eval_include=str(tasks), lm_eval_limit=4)
    harness.check(cfg)
    got = harness.run_tasks(model, tokenizer, cfg)
    assert got["lm_eval/tiny_local/n"] == 4 and 0 <= got["lm_eval/tiny_local/acc"] <= 1
    assert set(got) == {"lm_eval/tiny_local/acc", "lm_eval/tiny_local/acc_stderr", "lm_eval/tiny_local/n"}
    assert harness.run_tasks(model, tokenizer, EvalConfig()) == {}


def test_errors_name_what_was_expected_and_how_to_fix_it(tmp_path, monkeypatch):
    with pytest.raises(
        ValueError, match="unknown lm-evaluation-harness task 'layerprobe_mcq'.*did you mean layerprobe_mc"
    ):
        harness.check(EvalConfig(lm_eval_tasks=["layerprobe_mcq"]), "x.json")
    with pytest.raises(ValueError, match="scores the multiple-choice set of data.mc, got no data.mc; pass --data.mc"):
        harness.check(EvalConfig(lm_eval_tasks=["layerprobe_mc"]), "")
    with pytest.raises(FileNotFoundError, match="eval.lm_eval_include must be a folder"):
        harness.check(EvalConfig(lm_eval_tasks=["x"], lm_eval_include=str(tmp_path / "none")))
    with pytest.raises(ValueError, match="lm_eval_limit must be >= 0"):
        EvalConfig(lm_eval_limit=-1)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    with pytest.raises(ImportError, match=r"not installed .*pip install 'layerprobe\[lm-eval\]'"):
        harness.check(EvalConfig(lm_eval_tasks=["layerprobe_mc"]), "x.json")
    harness.check(EvalConfig(), None)  # no tasks: nothing to check, nothing imported


def test_results_flatten_to_one_name_per_task_metric_and_filter():
    results = {
        "results": {
            "arc_easy": {
                "alias": "arc_easy",
                "acc,none": 0.5,
                "acc_stderr,none": 0.1,
                "exact_match,strict": 0.25,
                "acc_norm_stderr,none": "N/A",
            }
        },
        "n-samples": {"arc_easy": {"original": 100, "effective": 20}},
    }
    got = harness.flatten(results)
    assert math.isnan(got.pop("lm_eval/arc_easy/acc_norm_stderr"))
    assert got == {
        "lm_eval/arc_easy/acc": 0.5,
        "lm_eval/arc_easy/acc_stderr": 0.1,
        "lm_eval/arc_easy/exact_match:strict": 0.25,
        "lm_eval/arc_easy/n": 20.0,
    }


def test_harness_scores_reach_sweep_results_and_relate_outcomes():
    """A sweep's results row and relate's outcomes read the harness's metrics from summary.json: as PHASE.KEY and
    as drop.KEY (cpt - sft), one drop per score (not its stderr or count)."""
    from layerprobe.evaluation.outcomes import harness_drops, read_outcomes
    from layerprobe.sweep.results import flatten

    summary = {
        "cpt": {
            "mc_acc": 0.5,
            "lm_eval/arc_easy/acc": 0.6,
            "lm_eval/arc_easy/acc_stderr": 0.1,
            "lm_eval/arc_easy/n": 20.0,
        },
        "sft": {
            "mc_acc": 0.4,
            "lm_eval/arc_easy/acc": 0.45,
            "lm_eval/arc_easy/acc_stderr": 0.1,
            "lm_eval/arc_easy/n": 20.0,
        },
    }
    assert harness_drops(summary) == ["drop.lm_eval/arc_easy/acc"]
    got = read_outcomes(summary, ["drop.lm_eval/arc_easy/acc", "sft.lm_eval/arc_easy/acc", "drop.mc_acc"])
    assert got == pytest.approx(
        {"drop.lm_eval/arc_easy/acc": 0.15, "sft.lm_eval/arc_easy/acc": 0.45, "drop.mc_acc": 0.1}
    )
    assert math.isnan(read_outcomes(summary, ["drop.lm_eval/hellaswag/acc"])["drop.lm_eval/hellaswag/acc"])
    assert flatten(summary)["sft.lm_eval/arc_easy/acc"] == 0.45


def test_runs_without_harness_tasks_keep_their_config_hash():
    """The lm_eval_* settings are left out of to_dict (so out of hashes and stage fingerprints) until a task is
    named: run folders made before they existed stay done."""
    from layerprobe.core.config import TrainConfig, resolve

    plain = TrainConfig()
    assert not {"lm_eval_tasks", "lm_eval_include", "lm_eval_limit"} & set(plain.to_dict()["eval"])
    assert resolve(plain.to_dict()).hash() == plain.hash()
    with_tasks = resolve({"eval": {"lm_eval_tasks": "hellaswag,arc_easy", "lm_eval_limit": 10}})
    assert with_tasks.eval.lm_eval_tasks == ["hellaswag", "arc_easy"]
    assert with_tasks.to_dict()["eval"]["lm_eval_limit"] == 10 and with_tasks.hash() != plain.hash()
    assert resolve(with_tasks.to_dict()).hash() == with_tasks.hash()
