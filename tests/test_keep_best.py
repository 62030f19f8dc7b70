"""``--sft.keep_best retention_style`` (layerprobe.train.keepbest): the step chosen by the rule computed by hand, the
kept state against a model trained to exactly that step, its full evaluation as ``sft_best``, and the refusals."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from test_pipeline import SHORT, _main

from layerprobe import cli
from layerprobe.core import run_results, rundir
from layerprobe.core.config import TrainConfig, add_config_arguments, resolve
from layerprobe.record.records import load_records

KEEP = {"sft.probe_every": 2, "sft.keep_best": "retention_style"}


def _config(**over) -> dict:
    data = json.loads(json.dumps(SHORT))
    # 10 steps at a rate that makes the tiny model's style curve rise unevenly, so the rule stops before the end
    data["sft"] = {**data["sft"], "max_steps": 10, "learning_rate": 5e-2}
    data["eval"] = {**data["eval"], "max_probes": 4, "max_instructions": 4, "loss_docs": 8, "general_chars": 2000}
    for dotted, value in over.items():
        section, key = dotted.split(".")
        data.setdefault(section, {})[key] = value
    return data


# -- refusals and help ---------------------------------------------------------------------------------------------


def test_bad_combinations_are_refused_naming_the_fix():
    cases = [
        ({"sft.keep_best": "retention_style"}, "sft.probe_every is 0; give sft.probe_every N"),
        ({**KEEP, "sft.keep_best": "best_loss"}, "keep_best must be '' .* retention_style, got 'best_loss'"),
        ({"cpt.probe_every": 2, "cpt.keep_best": "retention_style"}, "cpt.keep_best must be ''"),
        ({**KEEP, "sft.method": "full"}, "whole model each time; give sft.select"),
    ]
    for over, match in cases:
        with pytest.raises(ValueError, match=match):
            resolve(_config(**over))
    resolve(_config(**KEEP, **{"sft.method": "full", "sft.select": "last:1"}))  # restricted full fine-tuning: fine
    # off, it is not in the config: hashes and fingerprints of runs made before it existed stay what they were
    assert "keep_best" not in TrainConfig().to_dict()["sft"]
    assert resolve(_config(**KEEP)).to_dict()["sft"]["keep_best"] == "retention_style"


def test_help_says_where_the_states_live_and_what_stays():
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "RUN/sft/kept/step-NNNNNN.safetensors" in text and "RUN/sft/kept/best/" in text
    assert "Every kept state stays on disk" in text and "--sft.keep_best retention_style" in text


def test_no_style_probes_is_refused_before_anything_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LAYERPROBE_DEBUG", raising=False)
    plain_less = tmp_path / "instructions.jsonl"
    plain_less.write_text(json.dumps({"prompt": "挨拶して", "answer": "こんにちはでござる。"}) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config(**KEEP, **{"data.instructions": str(plain_less)})))
    out = tmp_path / "run"
    code, err = _main(["train", "--config", str(config), "--out", str(out)], capsys)
    last = err.replace("\r", "\n").splitlines()[-1]  # (the lines before: the toy base model's build bar)
    assert code == 2 and last.startswith("layerprobe train: error: sft.keep_best"), err
    assert "no held-out instruction has a plain twin" in last
    assert not out.exists()  # nothing trained


# -- the pipeline end to end ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LAYERPROBE_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    from layerprobe.train.pipeline import run_pipeline

    cfg = resolve(_config(**KEEP))
    out = tmp_path_factory.mktemp("runs") / "kept"
    try:
        summary = run_pipeline(cfg, out)
        yield cfg, out, summary
    finally:
        mp.undo()


def _rule_by_hand(records) -> int:
    """The earliest probe step whose mean style log-odds gained 90 % of the final gain over step 0: a plain loop."""
    rows = records[
        (records["phase"] == "sft")
        & (records["quantity"] == "style_logodds")
        & (records["module"] == "instruction")
        & (records["param"] == "")
    ]
    style = sorted(zip(rows["step"], rows["value"]))
    final = style[-1][1] - style[0][1]
    assert final > 0  # the toy SFT learns the style: the rule has a gain to take 90 % of
    for step, value in style:
        if value - style[0][1] >= 0.9 * final:
            return int(step)
    raise AssertionError("unreachable: the last step reaches its own gain")


def test_the_chosen_step_is_the_rules_and_every_probe_step_is_kept(kept_run):
    from layerprobe.evaluation.tradeoff import best_step

    cfg, out, summary = kept_run
    records = load_records(out)
    chosen = summary["keep_best"]["step"]
    assert chosen == _rule_by_hand(records) == best_step(records)["step"]
    assert 0 < chosen < summary["keep_best"]["last_step"] == 10  # an early step: the tests below can tell it apart
    steps = [0, 2, 4, 6, 8, 10]
    assert rundir.kept_steps(out) == steps == sorted(records[records["block"] == "probe"]["step"].unique())
    choice = json.loads((rundir.best_dir(out) / rundir.CHOICE).read_text())
    assert choice["step"] == chosen and choice["kept_steps"] == steps
    assert summary["stages"]["sft"]["keep_seconds"] > 0
    # what it keeps: only the adapter's factors, as SFT trained them
    from safetensors.torch import load_file

    state = load_file(str(rundir.kept_state(out, chosen)))
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state)
    # the kept states are not part of the SFT model's identity (the evaluation cache's key)
    copy = out.parent / "sft-copy"
    shutil.copytree(rundir.stage_dir(out, "sft"), copy, ignore=shutil.ignore_patterns(rundir.KEPT))
    assert rundir.content_hash(copy) == rundir.content_hash(rundir.stage_dir(out, "sft"))


def test_sft_best_equals_a_model_trained_to_exactly_that_step(kept_run):
    from transformers import TrainerCallback

    from layerprobe.evaluation.evalservice import Evaluation
    from layerprobe.train.models import load_model, load_tokenizer, make_trainable
    from layerprobe.train.pipeline import load_data
    from layerprobe.train.stages import sft_trainer

    cfg, out, summary = kept_run
    chosen = summary["keep_best"]["step"]

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= chosen

    merged = str(rundir.stage_dir(out, "merge"))
    data = load_data(cfg)
    tok = load_tokenizer(merged)
    model, _ = make_trainable(load_model(merged), cfg.sft, cfg.phase_seed(cfg.sft))
    trainer = sft_trainer(cfg, model, tok, data.sft_rows, out.parent / "reference", [StopAt()])
    trainer.train()  # the same max_steps (so the same learning-rate schedule), stopped at the chosen step
    assert trainer.state.global_step == chosen

    from safetensors.torch import load_file

    kept = load_file(str(rundir.kept_state(out, chosen)))
    trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert set(kept) == set(trained)
    assert max(float((kept[n] - trained[n]).abs().max()) for n in kept) == 0.0

    metrics = run_results.read_metrics(out)
    assert set(metrics) == {"base", "cpt", "sft", "sft_best"} and summary["sft_best"] == pytest.approx(
        metrics["sft_best"], nan_ok=True
    )
    evaluation = Evaluation.of(data.eval_set, cfg.eval, cfg.cpt.max_length, cfg.data.mc)
    with torch.no_grad():
        reference, _ = evaluation.run(model.eval(), tok)
    assert set(reference) == set(metrics["sft_best"])
    for name, value in reference.items():
        assert metrics["sft_best"][name] == pytest.approx(value, abs=1e-5, nan_ok=True), name
    assert metrics["sft_best"]["style_logodds"] != pytest.approx(metrics["sft"]["style_logodds"], abs=1e-3)


def test_sft_best_reaches_the_summary_table_report_and_sweep_columns(kept_run):
    from layerprobe.report.run import summary_table
    from layerprobe.sweep.results import flatten, item_counts
    from layerprobe.train.pipeline import format_table

    cfg, out, summary = kept_run
    assert "sft (kept)" in format_table(summary).splitlines()[0]
    assert "at the kept SFT step" in summary_table(summary).columns
    columns = {**flatten(summary), **item_counts(out)}
    assert {"sft_best.cloze_acc", "sft_best.style_logodds", "keep_best.step", "sft_best.cloze_acc.n"} <= set(columns)
    assert columns["keep_best.step"] == summary["keep_best"]["step"]
    assert (rundir.answers_path(out, "sft_best")).is_file()
    # the report shows the kept step's column and names the step
    from layerprobe.report import write_report

    page = write_report(out).read_text(encoding="utf-8")
    assert "at the kept SFT step" in page and f"step {summary['keep_best']['step']} of 10" in page


def test_cli_refusal_lists_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LAYERPROBE_DEBUG", raising=False)
    code = cli.main(["train", "--sft.keep_best", "retention_style", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sft.probe_every is 0" in err[0]
    assert not (tmp_path / "r").exists()


def test_restricted_full_fine_tuning_keeps_only_the_trainable_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from layerprobe.evaluation.evalservice import Evaluation
    from layerprobe.train.models import load_model, load_tokenizer
    from layerprobe.train.pipeline import load_data, run_pipeline

    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = resolve(_config(**KEEP, **{"sft.method": "full", "sft.select": "layers:1", "sft.learning_rate": 1e-3}))
    out = tmp_path / "full"
    summary = run_pipeline(cfg, out)
    chosen = summary["keep_best"]["step"]
    state = load_file(str(rundir.kept_state(out, chosen)))
    assert state and all(".layers.1." in k for k in state)  # only the unfrozen layer, not a whole model
    # by hand: the merged CPT model with the kept weights put in, evaluated as the pipeline evaluates
    merged = str(rundir.stage_dir(out, "merge"))
    model = load_model(merged)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    data = load_data(cfg)
    evaluation = Evaluation.of(data.eval_set, cfg.eval, cfg.cpt.max_length, cfg.data.mc)
    with torch.no_grad():
        reference, _ = evaluation.run(model.eval(), load_tokenizer(merged))
    got = run_results.read_metrics(out)["sft_best"]
    for name, value in reference.items():
        assert got[name] == pytest.approx(value, abs=1e-5, nan_ok=True), name
