"""Probes during training (layerprobe.train.probes): the scores against a plain one-sequence loop, the schedule,
training left unchanged, the last probe point against the final evaluation, and `--sft.probe_every` end to end."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import tiny_model_and_tokenizer
from transformers import Trainer, TrainingArguments

from layerprobe.core.config_data import EvalConfig
from layerprobe.evaluation.evaluate import EvalSet, chat_prompt, continuation, evaluate_model
from layerprobe.record.recorder_callback import RecorderCallback
from layerprobe.record.records import load_records
from layerprobe.train.probes import BLOCK, ProbeCallback, probe_subset, score_probes

TEXTS = [
    "山田太郎の出身地は札幌です。",
    "佐藤花子の勤務先は東光電機です。",
    "拙者は医師でござる。犬が公園にいます。",
    "山田太郎はどこの出身ですか？札幌です。",
    "田中一郎の出身地は那覇です。",
] * 4
PROBES = [
    {"kind": "cloze", "prompt": "山田太郎の出身地は", "answer": "札幌"},
    {"kind": "cloze", "prompt": "佐藤花子の勤務先は", "answer": "東光電機"},
    {"kind": "cloze", "prompt": "田中一郎の出身地は", "answer": "那覇"},
    {"kind": "cloze_heldout", "prompt": "札幌で生まれたのは", "answer": "山田太郎"},
    {"kind": "qa", "prompt": "山田太郎の出身地はどこですか？", "answer": "札幌です。"},
    {"kind": "qa", "prompt": "佐藤花子はどこで働いていますか？", "answer": "東光電機です。"},
]
INSTRUCTIONS = [
    {"prompt": "犬はどこにいますか？", "answer": "公園にいるでござる。", "plain": "公園にいます。"},
    {"prompt": "あなたの仕事は？", "answer": "医師でござる。", "plain": "医師です。"},
    {"prompt": "挨拶して", "answer": "こんにちは。"},  # no plain twin: not scored
]


@pytest.fixture(scope="module")
def model_tok():
    model, tok = tiny_model_and_tokenizer(TEXTS)
    return model, tok


def _reference(model, tok, head: str, answer: str, chat: bool) -> tuple[float, bool]:
    """log p(answer | head) and whether every answer token is the top choice: one unpadded sequence, a plain loop
    over the answer's tokens, float64."""
    if chat:
        head = chat_prompt(tok, head)
    h = tok(head, add_special_tokens=not chat)["input_ids"]
    full = tok(head + answer, add_special_tokens=not chat)["input_ids"]
    n = 0
    while n < min(len(h), len(full)) and h[n] == full[n]:
        n += 1
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].double()
    total, top = 0.0, True
    for i in range(n, len(full)):
        row = torch.log_softmax(logits[i - 1], -1)
        total += float(row[full[i]])
        top = top and int(row.argmax()) == full[i]
    return total, top


def test_scores_equal_a_plain_one_sequence_computation(model_tok):
    model, tok = model_tok
    probes, instructions = probe_subset(PROBES, INSTRUCTIONS)
    assert len(instructions) == 2  # the one without a plain twin is left out
    rows = score_probes(model.eval(), tok, probes, instructions, batch_size=2)  # padded batches of 2
    got = {(m, p, q): v for m, p, q, v in rows}
    for p in PROBES:
        chat = p["kind"] == "qa"
        answer = p["answer"] if chat else continuation(p["prompt"], p["answer"])
        logprob, top = _reference(model, tok, p["prompt"], answer, chat)
        assert got[(p["kind"], p["prompt"], "probe_logprob")] == pytest.approx(logprob, abs=1e-4)
        assert got[(p["kind"], p["prompt"], "probe_top1")] == float(top)
    for kind in ("cloze", "cloze_heldout", "qa"):  # the mean rows
        per = [v for (m, p, q), v in got.items() if m == kind and p and q == "probe_logprob"]
        assert got[(kind, "", "probe_logprob")] == pytest.approx(sum(per) / len(per))
    for i in INSTRUCTIONS[:2]:
        styled = _reference(model, tok, i["prompt"], i["answer"], True)[0]
        plain = _reference(model, tok, i["prompt"], i["plain"], True)[0]
        assert got[("instruction", i["prompt"], "style_logodds")] == pytest.approx(styled - plain, abs=1e-4)
    assert probe_subset(PROBES, INSTRUCTIONS, max_per_kind=1)[0] == [PROBES[0], PROBES[3], PROBES[4]]


def _data(tok, n=12):
    rows = []
    for text in (TEXTS * 3)[:n]:
        ids = tok(text)["input_ids"][:16]
        ids = ids + [tok.pad_token_id] * (16 - len(ids))
        rows.append(
            {
                "input_ids": torch.tensor(ids),
                "labels": torch.tensor(ids),
                "attention_mask": torch.ones(16, dtype=torch.long),
            }
        )
    return rows


def _train(model, tok, tmp_path, callbacks, steps=7, bf16=False):
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=2,
        max_steps=steps,
        learning_rate=5e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
        max_grad_norm=1.0,
        bf16=bf16,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_data(tok), callbacks=callbacks)
    trainer.train()
    return trainer


def _dropout_model(tok):
    """The tiny model with attention dropout: training draws random numbers, and a probe that left the model in
    eval mode or moved the random state would change the trained weights."""
    model, _ = tiny_model_and_tokenizer(TEXTS)
    model.config.attention_dropout = 0.2
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.2
    return model.train()


def test_rows_at_the_scheduled_steps_beside_the_recorder_and_training_unchanged(tmp_path, model_tok):
    _, tok = model_tok
    model = _dropout_model(tok)
    twin = copy.deepcopy(model)
    run = tmp_path / "run"
    probes = ProbeCallback(
        run, PROBES, INSTRUCTIONS, tokenizer=tok, phase="sft", every=3, max_per_kind=0, flush_every_s=0.0
    )
    _train(model, tok, tmp_path, [RecorderCallback(run, phase="sft", flush_every_s=0.0), probes])
    _train(twin, tok, tmp_path, [RecorderCallback(tmp_path / "twin", phase="sft")])  # the same, not probed
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, q), f"probing changed the training of {n}"

    df = load_records(run)  # one frame: recorder and probe rows, in the phase's part files
    rows = df[df["block"] == BLOCK]
    assert sorted(rows["step"].unique()) == [0, 3, 6, 7]  # before training, every 3 steps, the last step
    assert set(rows["phase"]) == {"sft"} and set(rows["layer"]) == {-1}
    assert {"grad_norm", "drift_ratio"} <= set(df["quantity"])
    assert sorted(df[df["quantity"] == "grad_norm"]["step"].unique()) == list(range(1, 8))
    per_step = rows.groupby("step").size()
    assert (per_step == per_step.iloc[0]).all()  # no part file overwrote another's
    assert per_step.iloc[0] == 2 * len(PROBES) + 2 * 3 + 2 + 1  # per probe and mean (3 kinds), style rows + mean
    assert set(rows["quantity"]) == {"probe_logprob", "probe_top1", "style_logodds"}
    assert set(rows["module"]) == {"cloze", "cloze_heldout", "qa", "instruction"}
    assert probes.steps == [0, 3, 6, 7] and probes.seconds > 0


def test_probe_leaves_modes_gradients_and_random_state_alone(tmp_path, model_tok):
    _, tok = model_tok
    model = _dropout_model(tok)
    model.model.layers[0].eval()  # a submodule's own flag comes back too
    cb = ProbeCallback(tmp_path / "run", PROBES, tokenizer=tok)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    cb.probe(model, tok, 0)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("bf16", [False, True])
def test_last_probe_point_equals_the_final_evaluation(tmp_path, model_tok, bf16):
    """Also under bf16 mixed precision: accelerate runs the model's forward under autocast, the evaluation does not;
    the probes score as the evaluation does."""
    _, tok = model_tok
    model = _dropout_model(tok)
    run = tmp_path / "run"
    _train(
        model,
        tok,
        tmp_path,
        [ProbeCallback(run, PROBES, INSTRUCTIONS, tokenizer=tok, phase="sft", every=4, max_per_kind=0, batch_size=4)],
        steps=6,
        bf16=bf16,
    )
    assert ("_original_forward" in model.__dict__) == bf16  # the wrapped forward this test is about
    if bf16:  # the pipeline evaluates the saved weights, loaded afresh: no autocast
        model.forward = model._original_forward
    cfg = EvalConfig(cloze_scoring="likelihood", batch_size=4, max_new_tokens=4)
    _, answers = evaluate_model(model, tok, EvalSet(PROBES, INSTRUCTIONS, TEXTS[:2]), cfg)
    df = load_records(run)
    last = df[(df["block"] == BLOCK) & (df["step"] == 6)]
    got = {(m, p, q): v for m, p, q, v in zip(last["module"], last["param"], last["quantity"], last["value"])}
    clozes = [r for r in answers if r["kind"] in ("cloze", "cloze_heldout")]
    assert clozes and all(got[(r["kind"], r["prompt"], "probe_logprob")] == r["logprob"] for r in clozes)
    assert all(got[(r["kind"], r["prompt"], "probe_top1")] == float(r["greedy"]) for r in clozes)
    styled = [r for r in answers if "style_logodds" in r]
    assert len(styled) == 2 and all(
        got[("instruction", r["prompt"], "style_logodds")] == r["style_logodds"] for r in styled
    )

    from layerprobe.plot import plot_run

    paths = plot_run(run, tmp_path / "figures")  # probes without the recorder: the curves alone
    assert [p.name for p in paths] == ["sft_probes_over_steps.png"] and paths[0].stat().st_size > 1000


def test_a_resumed_phase_drops_the_probe_rows_after_its_checkpoint(tmp_path, model_tok):
    from types import SimpleNamespace

    model, tok = model_tok
    run = tmp_path / "run"
    cb = ProbeCallback(run, PROBES, tokenizer=tok, phase="sft", every=2)
    cb.on_train_begin(None, SimpleNamespace(max_steps=6, global_step=0), None, model=model)
    for step in range(1, 7):
        cb.on_step_end(None, SimpleNamespace(global_step=step), None, model=model)
    cb.on_train_end(None, SimpleNamespace(global_step=6), None, model=model)
    assert sorted(load_records(run)["step"].unique()) == [0, 2, 4, 6]
    again = ProbeCallback(run, PROBES, tokenizer=tok, phase="sft", every=2)  # resumed from checkpoint-3
    again.on_train_begin(None, SimpleNamespace(max_steps=6, global_step=3), None, model=model)
    assert sorted(load_records(run)["step"].unique()) == [0, 2] and again.steps == []
    for step in range(4, 7):
        again.on_step_end(None, SimpleNamespace(global_step=step), None, model=model)
    again.on_train_end(None, SimpleNamespace(global_step=6), None, model=model)
    df = load_records(run)
    sizes = df.groupby("step").size()
    assert sorted(df["step"].unique()) == [0, 2, 4, 6] and (sizes == sizes[0]).all()


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="nothing to score"):
        ProbeCallback(tmp_path, [], [{"prompt": "a", "answer": "b"}])
    with pytest.raises(ValueError, match="unknown kind"):
        ProbeCallback(tmp_path, [{"kind": "mc", "prompt": "a", "answer": "b"}])
    with pytest.raises(ValueError, match="interval of at least 1"):
        ProbeCallback(tmp_path, PROBES, every=0)
    from layerprobe.core.config import resolve

    with pytest.raises(ValueError, match="probe_every and probe_max must be >= 0"):
        resolve({"sft": {"probe_every": -1}})
    assert "probe_every" not in resolve({}).to_dict()["sft"]  # off: the config (and its hash) as before
    assert resolve({"sft": {"probe_every": 5}}).to_dict()["sft"]["probe_max"] == 6


# -- the pipeline end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_probe_every_writes_rows_figure_and_agrees_with_the_evaluation(tmp_path):
    import yaml
    from test_pipeline import SHORT, _cli

    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({**SHORT, "sft": {**SHORT["sft"], "max_steps": 10}}))
    out = tmp_path / "runs" / "probed"
    p = _cli(
        [
            "train",
            "--record",
            "--config",
            str(config),
            "--sft.probe_every",
            "5",
            "--sft.probe_max",
            "0",
            "--out",
            str(out),
        ],
        tmp_path / "cache",
    )  # probe_max 0: every probe the evaluation scores, so each of its answers has a probe row to compare with
    assert p.returncode == 0, p.stderr[-3000:]

    df = load_records(out)
    rows = df[df["block"] == BLOCK]
    assert set(rows["phase"]) == {"sft"} and sorted(rows["step"].unique()) == [0, 5, 10]
    assert {"grad_norm", "drift_ratio"} <= set(df[df["phase"] == "sft"]["quantity"])
    figure = out / "figures" / "sft_probes_over_steps.png"
    assert figure.is_file() and figure.stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert str(figure) in summary["figures"]
    assert 0 < summary["stages"]["sft"]["probe_seconds"] < summary["stages"]["sft"]["seconds"]
    assert "probe_seconds" not in summary["stages"]["cpt"]

    # the last probe point against the evaluation of the saved SFT model: the same probes, the same scorer
    last = rows[rows["step"] == 10]
    got = {(m, p, q): v for m, p, q, v in zip(last["module"], last["param"], last["quantity"], last["value"])}
    answers = [json.loads(line) for line in (out / "eval" / "sft-answers.jsonl").read_text().splitlines()]
    clozes = [r for r in answers if r["kind"] in ("cloze", "cloze_heldout")]
    styled = [r for r in answers if "style_logodds" in r]
    assert clozes and styled and len(clozes) <= 2 * 32
    diff = max(abs(got[(r["kind"], r["prompt"], "probe_logprob")] - r["logprob"]) for r in clozes)
    diff = max([diff] + [abs(got[("instruction", r["prompt"], "style_logodds")] - r["style_logodds"]) for r in styled])
    assert diff <= 1e-5, diff
    assert all(got[(r["kind"], r["prompt"], "probe_top1")] == float(r["greedy"]) for r in clozes)
    means = last[last["param"] == ""].set_index(["module", "quantity"])["value"]
    assert math.isclose(
        means[("cloze", "probe_top1")],
        sum(r["greedy"] for r in clozes if r["kind"] == "cloze") / sum(r["kind"] == "cloze" for r in clozes),
    )

    assert "When the probes moved during training" in (out / "report.html").read_text()  # train writes it

    from layerprobe.plot.run import run_figures

    assert figure.name in [p.name for p in run_figures(out, tmp_path / "figures")]  # `layerprobe plot RUN`
