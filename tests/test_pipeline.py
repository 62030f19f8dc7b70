"""Configs, data loading, the stages (pack, merge check, SFT masking) and the `layerprobe train --record` CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from layerprobe import cli
from layerprobe.core import run_results, rundir
from layerprobe.core.config import TrainConfig, config_from_args, dump_yaml, resolve
from layerprobe.core.config_phase import ATTN, MLP
from layerprobe.core.config_values import load_yaml
from layerprobe.evaluation.evaluate import METRICS

HELDOUT_METRICS = ("cloze_heldout_acc", "cloze_heldout_margin")  # the toy world has held-out clozes

ROOT = Path(__file__).resolve().parents[1]
STUDY_A = ROOT / "experiments" / "study_a" / "config.yaml"

# A shortened toy run: a tiny base model, a small world, a few steps per phase (well under 2 minutes).
SHORT = {
    "toy": {
        "base_people": 12,
        "base_orgs": 3,
        "base_docs_per_entity": 5,
        "everyday_docs": 20,
        "cpt_people": 4,
        "cpt_orgs": 2,
        "cpt_docs_per_entity": 5,
        "sft_examples": 24,
        "heldout_instructions": 8,
        "vocab_size": 400,
        "hidden_size": 32,
        "num_layers": 2,
        "base_steps": 4,
        "base_batch_size": 4,
        "block_size": 32,
    },
    "cpt": {"max_steps": 3, "batch_size": 4, "max_length": 32},
    "sft": {"max_steps": 3, "batch_size": 4, "max_length": 48},
    "eval": {"max_new_tokens": 6},
    "recorder": {"update_every": 1, "drift_every": 1},
}


def _parse(argv):
    return cli.build_parser().parse_args(argv)


# -- configs -------------------------------------------------------------------------------------------------


def test_study_a_config_holds_the_study_settings():
    cfg = config_from_args(_parse(["train", "--config", str(STUDY_A)]))
    assert cfg.seed == 3407 and cfg.record
    for phase in (cfg.cpt, cfg.sft):
        assert (phase.method, phase.r, phase.lora_dropout, phase.use_rslora) == ("lora", 32, 0.2, False)
    assert cfg.cpt.lora_alpha == 128 and cfg.cpt.target_modules == ATTN + MLP + ["embed_tokens", "lm_head"]
    assert cfg.sft.lora_alpha == 8 and cfg.sft.target_modules == ATTN + MLP
    assert "layerprobe train" in STUDY_A.read_text().splitlines()[0] + STUDY_A.read_text()[:2000]


def test_flags_override_yaml_and_every_value_is_typed(tmp_path):
    cfg = config_from_args(
        _parse(
            [
                "train",
                "--config",
                str(STUDY_A),
                "--cpt.lora_alpha",
                "32",
                "--sft.target_modules",
                "q_proj,v_proj",
                "--cpt.layers_to_transform",
                "0,2",
                "--eval.base",
                "false",
                "--no-record",
                "--toy.cpt_people",
                "7",
            ]
        )
    )
    assert cfg.cpt.lora_alpha == 32.0 and isinstance(cfg.cpt.lora_alpha, float)
    assert cfg.sft.target_modules == ["q_proj", "v_proj"] and cfg.cpt.layers_to_transform == [0, 2]
    assert cfg.eval.base is False and cfg.record is False and cfg.toy.cpt_people == 7
    assert cfg.cpt.r == 32  # from the YAML
    # the resolved config written to a run folder reads back to the same config
    f = tmp_path / "c.yaml"
    f.write_text(dump_yaml(cfg))
    assert resolve(load_yaml(f)).hash() == cfg.hash()
    assert resolve({}).hash() == TrainConfig().hash() != cfg.hash()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--cpt.r", "abc"], "cpt.r expects a number"),
        (["--cpt.r", "2.5"], "cpt.r expects a number"),
        (["--cpt.method", "qlora"], "method must be 'lora' or 'full'"),
        (["--record", "--eval.base", "maybe"], "eval.base expects true or false"),
        (["--cpt.target_modules", ""], "LoRA needs target_modules"),
    ],
)
def test_bad_values_are_refused_with_what_was_expected(argv, match):
    with pytest.raises(ValueError, match=match):
        config_from_args(_parse(["train", *argv]))


def test_unknown_yaml_key_names_the_valid_keys(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("cpt:\n  lora_alpah: 16\n")
    with pytest.raises(ValueError, match=r"unknown config key 'cpt.lora_alpah'; valid keys here: method, r, lora_a"):
        config_from_args(_parse(["train", "--config", str(f)]))


def test_every_command_help_shows_an_example(capsys):
    for name in ("train", "cpt", "merge", "sft", "eval"):
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        out = capsys.readouterr().out
        assert "example:" in out and f"layerprobe {name}" in out.split("example:")[1] and "--cpt.lora_alpha" in out


# -- data ----------------------------------------------------------------------------------------------------


def _write(path: Path, rows) -> Path:
    import pandas as pd

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_cpt_text_loads_from_every_format(tmp_path):
    from layerprobe.sources.data import load_cpt_texts

    docs = ["一つ目の記事です。", "二つ目の記事です。"]
    for suffix in (".jsonl", ".json", ".parquet"):
        f = _write(tmp_path / f"d{suffix}", [{"text": d, "id": i} for i, d in enumerate(docs)])
        assert load_cpt_texts(str(f)) == docs
    assert load_cpt_texts(str(_write(tmp_path / "d.md", ["", *docs, ""]))) == docs
    f = _write(tmp_path / "other.jsonl", [{"body": d} for d in docs])
    assert load_cpt_texts(str(f), text_field="body", limit=1) == docs[:1]
    with pytest.raises(ValueError, match=r"has fields \['body'\]; expected a text field 'text'"):
        load_cpt_texts(str(f))


def test_sft_rows_accept_three_schemas_and_name_fields_when_none_fits(tmp_path):
    from layerprobe.sources.data import load_sft_rows

    want = {
        "prompt": [{"role": "user", "content": "質問\n\n入力"}],
        "completion": [{"role": "assistant", "content": "答え"}],
    }
    dolly = _write(
        tmp_path / "dolly.jsonl", [{"instruction": "質問", "input": "入力", "output": "答え", "category": "qa"}]
    )
    pc = _write(tmp_path / "pc.json", [{"prompt": "質問\n\n入力", "completion": "答え"}])
    chat = _write(
        tmp_path / "chat.parquet",
        [{"messages": [{"role": "user", "content": "質問\n\n入力"}, {"role": "assistant", "content": "答え"}]}],
    )
    for f in (dolly, pc, chat):
        assert load_sft_rows(str(f)) == [want]
    bad = _write(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(
        ValueError,
        match=r"has fields \['answer', 'question'\]; expected messages \| prompt \+ "
        r"completion \| instruction \(\+ input\) \+ output",
    ):
        load_sft_rows(str(bad))


def test_probe_and_instruction_files_are_checked(tmp_path):
    from layerprobe.sources.data import load_instructions, load_probes

    ok = _write(tmp_path / "p.jsonl", [{"kind": "cloze", "prompt": "Aの出身地は", "answer": "札幌", "x": 1}])
    assert load_probes(str(ok)) == [{"kind": "cloze", "prompt": "Aの出身地は", "answer": "札幌"}]
    with pytest.raises(ValueError, match=r"has fields \['answer', 'prompt'\]; expected \['answer', 'kind', 'prompt'\]"):
        load_probes(str(_write(tmp_path / "q.jsonl", [{"prompt": "p", "answer": "a"}])))
    with pytest.raises(ValueError, match="has kind 'mcq'"):
        load_probes(str(_write(tmp_path / "r.jsonl", [{"kind": "mcq", "prompt": "p", "answer": "a"}])))
    assert load_instructions(str(_write(tmp_path / "i.jsonl", [{"instruction": "書いて", "input": ""}]))) == [
        {"prompt": "書いて"}
    ]


def test_file_data_holds_out_instructions_and_rewrites_answers(tmp_path):
    from layerprobe.sources.realdata import gozaru_rewrite
    from layerprobe.train.pipeline import load_data

    rows = [{"instruction": f"質問{i}", "input": "", "output": f"答え{i}です。"} for i in range(10)]
    sft = _write(tmp_path / "sft.jsonl", rows)
    cpt = _write(tmp_path / "news.md", ["記事一。", "記事二。", "記事三。"])
    cfg = resolve(
        {
            "data": {
                "cpt": str(cpt),
                "sft": str(sft),
                "heldout": 3,
                "max_sft_rows": 5,
                "sft_rewrite": "gozaru",
                "max_cpt_docs": 2,
            }
        }
    )
    data = load_data(cfg)
    assert data.cpt_docs == ["記事一。", "記事二。"] and data.eval_set.cpt_docs == data.cpt_docs
    assert [r["prompt"][0]["content"] for r in data.sft_rows] == [f"質問{i}" for i in range(5)]
    assert [r["completion"][0]["content"] for r in data.sft_rows] == [
        gozaru_rewrite(f"答え{i}です。") for i in range(5)
    ]
    assert all("ござる" in r["completion"][0]["content"] for r in data.sft_rows)
    assert data.eval_set.instructions == [
        {"prompt": f"質問{i}", "answer": gozaru_rewrite(f"答え{i}です。"), "plain": f"答え{i}です。"} for i in (7, 8, 9)
    ]
    assert data.eval_set.probes == []  # no probes file, no toy world: knowledge metrics are n/a
    with pytest.raises(ValueError, match="has 10 rows, not more than data.heldout=10"):
        load_data(resolve({"data": {"sft": str(sft), "heldout": 10}}))
    with pytest.raises(ValueError, match="sft_rewrite must be '' or 'gozaru'"):
        resolve({"data": {"sft_rewrite": "pirate"}})


def test_missing_files_and_hub_names_offline_are_one_line_errors(tmp_path, monkeypatch):
    from layerprobe.sources.data import load_rows
    from layerprobe.sources.presets import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="data file 'no/such/file.jsonl' not found"):
        load_rows("no/such/file.jsonl")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1.*local JSONL/JSON/Parquet/text file"):
        load_rows("someorg/somedata")
    with pytest.raises(OSError, match="HF_HUB_OFFLINE=1.*pass the folder"):
        resolve_model("someorg/somemodel")
    with pytest.raises(FileNotFoundError, match="no model folder at missing/model"):
        resolve_model("./missing/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model folder with config.json"):
        resolve_model(str(tmp_path / "empty"))


# -- stages --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_tok():
    from layerprobe.sources.toyworld.tokenizer import build_tokenizer

    return build_tokenizer(["山田太郎の出身地は札幌です。", "拙者は医師でござる。犬が公園にいます。"] * 4, 300)


def test_pack_texts_concatenates_documents_with_eos_and_cuts_blocks(toy_tok):
    from layerprobe.sources.data import pack_texts

    docs = ["山田太郎の出身地は札幌です。", "犬が公園にいます。", "拙者は医師でござる。"]
    flat = [t for d in docs for t in toy_tok(d)["input_ids"] + [toy_tok.eos_token_id]]
    blocks = pack_texts(toy_tok, docs, 5)
    assert blocks == [flat[i : i + 5] for i in range(0, len(flat) - 4, 5)]
    assert [t for b in blocks for t in b] == flat[: len(blocks) * 5] and len(flat) - len(blocks) * 5 < 5
    assert pack_texts(toy_tok, docs[:1], 1000) == [flat[: len(toy_tok(docs[0])["input_ids"]) + 1]]


def _lora_setup(tmp_path, tie: bool, rslora: bool):
    """A tiny Llama saved as a base folder, and a LoRA adapter on it with non-zero B (so the merge moves weights)."""
    import torch
    from conftest import make_tiny_llama
    from peft import LoraConfig, get_peft_model

    base = make_tiny_llama(vocab=300, tie=tie)
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(
        make_tiny_llama(vocab=300, tie=tie),
        LoraConfig(
            r=4,
            lora_alpha=16,
            target_modules=ATTN + MLP + ["embed_tokens", "lm_head"],
            init_lora_weights=False,
            use_rslora=rslora,
        ),
    )
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter, save_embedding_layers=False)
    return base_dir, adapter


@pytest.mark.parametrize("tie, rslora", [(False, False), (False, True), (True, False)])
def test_merge_equals_base_plus_scaled_lora_product(tmp_path, toy_tok, tie, rslora):
    import torch
    from safetensors.torch import load_file, save_file

    from layerprobe.train.stages import check_merge, run_merge

    base_dir, adapter = _lora_setup(tmp_path, tie, rslora)
    toy_tok.save_pretrained(adapter)
    info = run_merge(str(base_dir), adapter, tmp_path / "merged")
    assert info["check"]["ok"] and info["check"]["lora_modules"] == 2 * 7 + 2
    assert "max |merged - (base + s*B*A)|" in info["what"]

    # a plain reference for one linear and the embedding: W + s * B @ A, E + s * (B @ A).T
    s = 16 / (2.0 if rslora else 4)
    lora = load_file(adapter / "adapter_model.safetensors")
    base = load_file(base_dir / "model.safetensors")
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    pre = "base_model.model.model."
    a, b = lora[pre + "layers.1.mlp.up_proj.lora_A.weight"], lora[pre + "layers.1.mlp.up_proj.lora_B.weight"]
    want = base["model.layers.1.mlp.up_proj.weight"] + s * b @ a
    assert torch.allclose(merged["model.layers.1.mlp.up_proj.weight"], want, atol=1e-6)
    assert not torch.allclose(want, base["model.layers.1.mlp.up_proj.weight"], atol=1e-3)
    ea, eb = lora[pre + "embed_tokens.lora_embedding_A"], lora[pre + "embed_tokens.lora_embedding_B"]
    want_e = base["model.embed_tokens.weight"] + s * (eb @ ea).T
    assert torch.allclose(merged["model.embed_tokens.weight"], want_e, atol=1e-5)
    ha, hb = lora["base_model.model.lm_head.lora_A.weight"], lora["base_model.model.lm_head.lora_B.weight"]
    head = base["model.embed_tokens.weight" if tie else "lm_head.weight"]  # a tied base has no head tensor
    assert torch.allclose(merged["lm_head.weight"], head + s * hb @ ha, atol=1e-5)
    assert torch.equal(merged["model.norm.weight"], base["model.norm.weight"])

    # the merged model computes what base + adapter computes (a tied head gets its own copy, so its delta
    # does not also land on the embedding)
    from layerprobe.train.models import load_model

    x = torch.randint(0, 300, (2, 7))
    with torch.no_grad():
        want_logits = load_model(str(base_dir), str(adapter)).eval()(input_ids=x).logits
        got_logits = load_model(str(tmp_path / "merged")).eval()(input_ids=x).logits
    assert torch.allclose(got_logits, want_logits, atol=1e-4)

    # a merged file that is off by 1e-3 in one weight fails the check
    merged["model.layers.0.self_attn.q_proj.weight"][0, 0] += 1e-3
    save_file(merged, str(tmp_path / "merged" / "model.safetensors"), metadata={"format": "pt"})
    bad = check_merge(str(base_dir), adapter, tmp_path / "merged")
    assert not bad["ok"] and bad["worst"] == "model.layers.0.self_attn.q_proj.weight"
    assert bad["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)


def test_sft_loss_is_on_the_answer_and_eos_only(tmp_path, toy_tok):
    from conftest import make_tiny_llama

    from layerprobe.train.models import make_trainable
    from layerprobe.train.stages import sft_trainer

    cfg = resolve({"sft": {"max_steps": 1, "batch_size": 2, "max_length": 64}})
    rows = [
        {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
        for q, a in [("犬が公園にいますか？", "いるでござる。"), ("山田太郎の出身地は？", "札幌でござる。")]
    ]
    model, _ = make_trainable(make_tiny_llama(vocab=len(toy_tok)), cfg.sft, cfg.seed)
    trainer = sft_trainer(cfg, model, toy_tok, rows, tmp_path)
    for row, ex in zip(rows, trainer.train_dataset):
        prompt = toy_tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
        answer = toy_tok(row["completion"][0]["content"], add_special_tokens=False)["input_ids"]
        answer = answer + [toy_tok.eos_token_id]
        assert ex["input_ids"] == prompt + answer
        assert ex["labels"] == [-100] * len(prompt) + answer


# -- the CLI end to end --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_config(tmp_path_factory):
    import yaml

    d = tmp_path_factory.mktemp("cfg")
    f = d / "short.yaml"
    f.write_text(yaml.safe_dump(SHORT))
    return f


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _cli(args, cache: Path, timeout=240):
    env = {
        **os.environ,
        "LAYERPROBE_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    return subprocess.run(
        [sys.executable, "-m", "layerprobe", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, short_config, cache):
    out = tmp_path_factory.mktemp("runs") / "short"
    p = _cli(["train", "--record", "--config", str(short_config), "--out", str(out)], cache)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p


@pytest.mark.slow
def test_train_record_writes_a_complete_run_folder(run):
    from layerprobe.record.records import load_records

    out, p = run
    for sub in ("cpt", "merged", "sft", "eval", "records", "figures"):
        assert (out / sub).is_dir(), sub
    for sub in ("cpt", "merged", "sft", "eval"):
        assert (out / sub / "DONE").is_file(), sub
    assert (out / "cpt" / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    assert (out / "merged" / "tokenizer.json").is_file() and (out / "sft" / "adapter_config.json").is_file()
    lines = [ln for ln in p.stdout.splitlines() if re.match(r"\[\d/4\] ", ln)]
    assert [ln.split()[1] for ln in lines] == ["cpt", "merge", "sft", "eval"]
    assert all(f"-> {out}" in ln for ln in lines)
    assert "cloze_acc" in p.stdout and "cpt (before)" in p.stdout and "sft (after)" in p.stdout

    summary = json.loads((out / "summary.json").read_text())
    table = run_results.read_metrics(out)  # the one table of evaluation numbers: summary.json is derived from it
    assert set(table) == {"base", "cpt", "sft"} and not (out / "eval" / "cpt.json").exists()
    for phase in ("cpt", "sft"):
        assert set(summary[phase]) == set(METRICS) | {"general_loss", "style_logodds", *HELDOUT_METRICS}
        for metric, value in table[phase].items():  # NaN in the table is null in the JSON
            assert summary[phase][metric] == (None if value != value else pytest.approx(value)), metric
        assert "metrics" not in json.loads((out / "eval" / "DONE").read_text())
    assert summary["config_hash"] == resolve(load_yaml(out / "config.yaml")).hash()
    assert set(summary["stages"]) == {"cpt", "merge", "sft", "eval"}
    assert all(summary["stages"][s]["seconds"] >= 0 for s in summary["stages"])
    assert summary["stages"]["cpt"]["steps"] == SHORT["cpt"]["max_steps"]
    for phase in ("cpt", "sft"):  # the recorder's own time, a part of the phase's
        assert 0 < summary["stages"][phase]["record_seconds"] < summary["stages"][phase]["seconds"]
        assert summary["stages"][phase]["trainable_share"] > 0  # LoRA on a tiny model: may exceed 1
        store = summary["stages"][phase]["reference_store"]  # auto: LoRA factors on CPU fit host memory
        assert (store["store"], store["asked"], store["device"]) == ("host", "auto", "cpu") and store["bytes"] > 0

    rec = load_records(out)
    assert set(rec["phase"]) == {"cpt", "sft"}
    for phase in ("cpt", "sft"):
        r = rec[rec["phase"] == phase]
        assert {"grad_norm", "update_ratio", "drift_ratio"} <= set(r["quantity"])
        assert sorted(r[r["quantity"] == "grad_norm"]["step"].unique()) == [1, 2, 3]
        assert r[r["block"] == "eval"].empty  # evaluation numbers live in eval/metrics.csv only
    cpt_blocks = set(rec[(rec["phase"] == "cpt") & (rec["quantity"] == "grad_norm")]["block"])
    assert {"embed", "head", "attn", "mlp"} <= cpt_blocks  # CPT adapts embed_tokens and lm_head too
    sft_blocks = set(rec[(rec["phase"] == "sft") & (rec["quantity"] == "grad_norm")]["block"])
    assert sft_blocks == {"attn", "mlp"}

    figures = sorted((out / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)
    assert sorted(summary["figures"]) == sorted(str(f) for f in figures)
    import os

    import torch

    machine = summary["machine"]  # what the numbers depend on besides the config
    # the run chooses fewer threads than the cores when other processes keep cores busy now (threads.choose_threads)
    assert 1 <= machine["threads"] <= max(torch.get_num_threads(), os.cpu_count() or 1)
    assert (machine["cores"], machine["torch"]) == (os.cpu_count(), torch.__version__)
    assert machine["cpu"]
    assert machine["threads_reason"]  # why this count (tests/test_threads.py checks the rule)
    # the precision that ran: fp32 on any device, the test model (hidden 32) being too narrow for bf16 to pay
    from layerprobe.train.models import bf16_supported

    why = "hidden size 32 < 512, too small for bf16 to pay" if bf16_supported() else "no native bfloat16 on this device"
    assert machine["precision"] == f"fp32 (auto: {why})"


@pytest.mark.slow
def test_rerun_skips_finished_stages_and_refuses_another_config(run, short_config, cache):
    out, _ = run
    done = (out / "cpt" / "DONE").stat().st_mtime_ns
    summary = (out / "summary.json").read_text()
    p = _cli(["train", "--record", "--out", str(out)], cache)  # no --config: the folder's config.yaml is used
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("already done, skipped") == 4 and "cloze_acc" in p.stdout
    assert (out / "cpt" / "DONE").stat().st_mtime_ns == done
    assert (out / "summary.json").read_text() == summary  # nothing ran, nothing rewritten

    p = _cli(["train", "--record", "--config", str(short_config), "--out", str(out), "--cpt.lora_alpha", "16"], cache)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "different config (cpt.lora_alpha: 128.0 -> 16.0)" in err[0] and "--overwrite" in err[0]
    assert (out / "summary.json").read_text() == summary


@pytest.mark.slow
def test_selected_full_finetuning_trains_only_the_selection_and_records_prove_it(tmp_path, short_config, cache):
    """Study B's form: full fine-tuning of SFT restricted by a selector; the audit is in the records."""
    from layerprobe.record.records import load_records

    out = tmp_path / "sel"
    p = _cli(
        [
            "train",
            "--record",
            "--config",
            str(short_config),
            "--out",
            str(out),
            "--sft.method",
            "full",
            "--sft.select",
            "layers:1 + head",
            "--eval.base",
            "false",
        ],
        cache,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "layers:1 + head -> layer 1 (1 of 2)" in p.stdout
    rec = load_records(out)
    sft = rec[rec["phase"] == "sft"]
    trained = sft[(sft["quantity"] == "grad_norm") & (sft["param"] != "")]
    assert {(l, b) for l, b in zip(trained["layer"], trained["block"])} == {
        (1, "attn"),
        (1, "mlp"),
        (1, "norm"),
        (-1, "head"),
    }
    moved = sft[sft["quantity"] == "frozen_moved"]
    assert len(moved) > 0 and moved["value"].sum() == 0  # every frozen tensor is bit-identical after SFT
    assert set(moved["layer"]) >= {0} and 1 not in set(moved["layer"])
    counts = sft[(sft["quantity"].isin(["n_params", "n_trainable"])) & (sft["module"] != "")]
    c = counts.pivot_table(index=["layer", "block", "module"], columns="quantity", values="value")
    share = sft[sft["quantity"] == "trainable_share"]["value"].item()
    assert share == pytest.approx(c["n_trainable"].sum() / c["n_params"].sum())
    assert (c.loc[0]["n_trainable"] == 0).all() and (c.loc[1]["n_trainable"] == c.loc[1]["n_params"]).all()


def _main(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_errors_are_one_line_and_leave_no_run_folder(tmp_path, capsys, monkeypatch, short_config, cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LAYERPROBE_CACHE", str(cache))
    monkeypatch.delenv("LAYERPROBE_DEBUG", raising=False)
    base = ["train", "--config", str(short_config)]
    cases = [
        (["--model", str(tmp_path / "no_model")], "no model folder at .*no_model; give an existing folder"),
        (["--model", "someorg/somemodel"], "because HF_HUB_OFFLINE=1; .* pass the folder"),
        (
            ["--data.sft", str(_write(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}]))],
            r"has fields \['answer', 'question'\]; expected messages",
        ),
        (["--data.cpt", str(_write(tmp_path / "c.jsonl", [{"body": "x"}]))], r"has fields \['body'\]; expected a text"),
        (
            ["--eval.lm_eval_tasks", "nope_task"],  # before any training; without the harness: how to install it
            "unknown lm-evaluation-harness task 'nope_task'|needs lm-evaluation-harness, which is not installed",
        ),
    ]
    for i, (extra, match) in enumerate(cases):
        out = tmp_path / f"run{i}"
        code, err = _main([*base, "--out", str(out), *extra], capsys)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("layerprobe train: error: ")
        import re

        assert re.search(match, err), err
        assert not out.exists()

    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "file.txt").write_text("x")
    code, err = _main([*base, "--out", str(tmp_path / "notarun"), "--overwrite"], capsys)
    assert code == 2 and "is not a layerprobe run folder" in err and (tmp_path / "notarun" / "file.txt").exists()

    code, err = _main(["sft", "--config", str(short_config), "--out", str(tmp_path / "fresh")], capsys)
    assert code == 2 and "not a run folder with finished stages" in err and not (tmp_path / "fresh").exists()


@pytest.mark.slow
def test_stage_commands_run_one_stage_each_with_full_fine_tuning(tmp_path, capsys, monkeypatch, short_config, cache):
    monkeypatch.setenv("LAYERPROBE_CACHE", str(cache))
    out = tmp_path / "full"
    flags = [
        "--config",
        str(short_config),
        "--out",
        str(out),
        "--cpt.method",
        "full",
        "--sft.method",
        "full",
        "--eval.base",
        "false",
    ]
    assert cli.main(["cpt", *flags]) == 0
    assert (out / "cpt" / "DONE").is_file() and not (out / "merged").exists()
    assert (out / "cpt" / "model.safetensors").is_file() and not (out / "cpt" / "adapter_config.json").exists()
    for stage in ("merge", "sft"):
        assert cli.main([stage, "--out", str(out)]) == 0  # the folder's config.yaml is reused
    assert "full fine-tuning" in json.loads((out / "merged" / "DONE").read_text())["what"]
    assert (out / "sft" / "model.safetensors").is_file() and not (out / "summary.json").exists()
    assert cli.main(["eval", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert "base" not in summary and set(summary["sft"]) == set(METRICS) | {
        "general_loss",
        "style_logodds",
        *HELDOUT_METRICS,
    }
    assert "[4/4] eval   evaluated the cpt, sft models" in stdout and "sft (after)" in stdout


@pytest.mark.slow
def test_a_failed_stage_writes_no_summary_and_the_rerun_resumes(tmp_path, capsys, monkeypatch, short_config, cache):
    import layerprobe.train.stages as S

    monkeypatch.setenv("LAYERPROBE_CACHE", str(cache))
    monkeypatch.delenv("LAYERPROBE_DEBUG", raising=False)
    out = tmp_path / "run"
    argv = ["train", "--config", str(short_config), "--out", str(out)]
    real = S.run_sft

    def broken(*a, **k):
        raise ValueError("SFT broke")

    monkeypatch.setattr(S, "run_sft", broken)
    code, err = _main(argv, capsys)
    assert code == 2 and err.splitlines()[-1] == "layerprobe train: error: SFT broke"  # after the erased CPT bar
    assert (out / "merged" / "DONE").is_file() and not (out / "sft" / "DONE").exists()
    assert not (out / "summary.json").exists()

    monkeypatch.setattr(S, "run_sft", real)
    code = cli.main(argv)
    stdout = capsys.readouterr().out
    assert code == 0
    assert "[1/4] cpt    already done" in stdout and "[2/4] merge  already done" in stdout
    assert "[3/4] sft    SFT" in stdout and (out / "summary.json").is_file()


def test_precision_auto_uses_bf16_only_where_it_pays(monkeypatch):
    from layerprobe.train import models

    monkeypatch.setattr(models, "bf16_supported", lambda: True)
    assert models.resolve_precision("fp32", 4096)[0] is False
    assert models.resolve_precision("bf16", 64)[0] is True
    assert models.resolve_precision("auto", 576) == (
        True,
        "bf16 autocast, fp32 master weights and optimizer state (auto: this device supports bfloat16)",
    )
    assert (
        models.resolve_precision("auto", 128)[0] is False
        and "hidden size 128" in models.resolve_precision("auto", 128)[1]
    )
    monkeypatch.setattr(models, "bf16_supported", lambda: False)
    assert models.resolve_precision("auto", 4096) == (False, "fp32 (auto: no native bfloat16 on this device)")
    with pytest.raises(ValueError, match="precision must be 'auto', 'bf16' or 'fp32', got 'fp16'"):
        resolve({"precision": "fp16"})


def _tiny_task(tmp_path: Path) -> Path:
    """A folder holding one local lm-evaluation-harness task, tiny_local (6 two-choice rows in a JSON-lines file)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = _write(tmp_path / "tiny.jsonl", [{"q": f"Q{i}", "choices": ["yes", "no"], "label": i % 2} for i in range(6)])
    (tasks / "tiny.yaml").write_text(
        f"task: tiny_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return tasks


@pytest.mark.slow
def test_harness_tasks_reach_metrics_summary_and_report(run, tmp_path, capsys, monkeypatch, cache):
    """`layerprobe eval --eval.lm_eval_include DIR --eval.lm_eval_tasks TASK` on a finished run: the harness's metrics
    for base, CPT and SFT in eval/metrics.csv, summary.json, the printed table and the report; a second evaluation
    is served by the evaluation cache."""
    import shutil

    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
    from layerprobe.report import write_report

    monkeypatch.setenv("LAYERPROBE_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    tasks = _tiny_task(tmp_path)
    flags = [
        "--out",
        str(out),
        "--overwrite",
        "--eval.lm_eval_include",
        str(tasks),
        "--eval.lm_eval_tasks",
        "tiny_local",
        "--eval.lm_eval_limit",
        "4",
        "--eval.max_probes",
        "2",
        "--eval.max_instructions",
        "2",
    ]
    assert cli.main(["eval", *flags]) == 0
    stdout = capsys.readouterr().out
    metrics = run_results.read_metrics(out)
    for phase in ("base", "cpt", "sft"):
        assert metrics[phase]["lm_eval/tiny_local/n"] == 4 and 0 <= metrics[phase]["lm_eval/tiny_local/acc"] <= 1
        assert "lm_eval/tiny_local/acc_stderr" in metrics[phase]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sft"]["lm_eval/tiny_local/acc"] == metrics["sft"]["lm_eval/tiny_local/acc"]
    assert "lm_eval/tiny_local/acc" in stdout and "1 lm-eval task(s)" in stdout
    assert "lm_eval/tiny_local/acc" in write_report(out).read_text(encoding="utf-8")
    # the same evaluation again (another folder, the same bytes): every model from the evaluation cache
    shutil.rmtree(out / "eval")
    (out / "summary.json").unlink()
    assert cli.main(["eval", *flags]) == 0
    assert "(base, cpt, sft from the evaluation cache)" in capsys.readouterr().out
    # NaN equal as text
    assert json.dumps(run_results.read_metrics(out), sort_keys=True) == json.dumps(metrics, sort_keys=True)


@pytest.mark.slow
def test_attribution_variants_run_harness_tasks_through_the_service_cache(run, tmp_path, capsys, monkeypatch, cache):
    """`layerprobe attribute --lm-eval-tasks T`: the harness's score of each variant is an attribution quantity; a
    rerun reads every evaluation from the cache (keyed by the checkpoints' bytes, not their file times)."""
    import yaml

    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed")
    from layerprobe.record.records import load_records

    monkeypatch.setenv("LAYERPROBE_CACHE", str(cache))
    config = load_yaml(rundir.config_path(run[0]))
    config["eval"]["lm_eval_include"] = str(_tiny_task(tmp_path))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    argv = [
        "attribute",
        "--run",
        str(run[0]),
        "--config",
        str(tmp_path / "config.yaml"),
        "--out",
        str(tmp_path / "a"),
        "--groups",
        "layers",
        "--modes",
        "revert",
        "--max-probes",
        "2",
        "--max-instructions",
        "2",
        "--lm-eval-tasks",
        "tiny_local",
    ]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    records = load_records(tmp_path / "a" / "attribute.parquet")
    quantities = set(records["quantity"])
    assert {"tuned:lm_eval/tiny_local/acc", "base:lm_eval/tiny_local/acc"} <= quantities
    assert not any(q.endswith(("_stderr", "/n")) for q in quantities)
    assert "0 from the cache" in first
    assert cli.main(argv) == 0
    assert " 0 evaluation(s) run" in capsys.readouterr().out


def test_the_stage_table_is_the_run_folders_stages_in_order():
    from layerprobe.train.stage_table import STAGE_TABLE

    assert tuple(s.name for s in STAGE_TABLE) == rundir.STAGES
