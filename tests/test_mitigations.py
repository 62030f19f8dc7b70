"""Mitigations of forgetting: the anchor (decoupled L2-SP, drift cap) and replay, each against a plain computation."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_llama

from layerprobe.core.config import resolve
from layerprobe.core.config_phase import ATTN, MLP
from layerprobe.weights.anchor import Anchor, AnchorCallback


def _perturb(model, seed=1, size=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(size * torch.randn(p.shape, generator=g))


def _lora(model, **kw):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=ATTN + MLP + ["embed_tokens"], **kw))


def _effective(model) -> dict[str, torch.Tensor]:
    """s * B @ A of every adapted module, materialised (embeddings transposed), keyed by module name."""
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            out[name] = mod.scaling["default"] * mod.lora_B["default"].weight @ mod.lora_A["default"].weight
        elif hasattr(mod, "lora_embedding_A") and "default" in mod.lora_embedding_A:
            out[name] = (mod.scaling["default"] * mod.lora_embedding_B["default"] @ mod.lora_embedding_A["default"]).T
    return out


def test_full_finetuning_l2sp_and_cap_match_the_formula():
    model = make_tiny_llama()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    anchor = Anchor(model, l2sp=20.0, drift_cap=0.1)
    _perturb(model)
    moved = {n: p.detach().clone() for n, p in model.named_parameters()}
    anchor.apply(0.01)
    capped = 0
    for n, p in model.named_parameters():
        d = (moved[n] - start[n]) * (1 - 0.01 * 20.0)
        limit = 0.1 * start[n].norm()
        if d.norm() > limit:
            d = d * limit / d.norm()
            capped += 1
        torch.testing.assert_close(p.detach(), start[n] + d, rtol=0, atol=1e-6)
        assert (p.detach() - start[n]).norm() <= limit * (1 + 1e-5)
    assert 0 < capped < len(start)  # norms (start near 1) stay under the cap, random matrices do not


def test_lora_l2sp_and_cap_act_on_the_effective_change():
    model = _lora(make_tiny_llama())
    base = {
        n: m.get_base_layer().weight.detach().clone()
        for n, m in model.named_modules()
        if hasattr(m, "get_base_layer") and n in _effective(model)
    }
    anchor = Anchor(model, l2sp=10.0)
    _perturb(model, size=0.2)
    before = _effective(model)
    anchor.apply(0.02)
    for name, dw in _effective(model).items():
        torch.testing.assert_close(dw, before[name] * (1 - 0.02 * 10.0), rtol=1e-5, atol=1e-7)
        assert torch.equal(base[name], dict(model.named_modules())[name].get_base_layer().weight)

    model2 = _lora(make_tiny_llama())
    anchor = Anchor(model2, drift_cap=1e-3)
    _perturb(model2, size=0.2)
    before = _effective(model2)
    anchor.apply(0.0)
    modules = dict(model2.named_modules())
    for name, dw in _effective(model2).items():
        w0 = modules[name].get_base_layer().weight.detach()
        ratio = float(dw.detach().norm() / w0.norm())
        want = min(1.0, 1e-3 * float(w0.norm()) / float(before[name].detach().norm()))
        assert ratio <= 1e-3 * (1 + 1e-5)
        torch.testing.assert_close(dw, before[name] * want, rtol=1e-5, atol=1e-8)


def test_attach_uses_each_groups_learning_rate_and_detaches():
    model = make_tiny_llama()
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    opt = torch.optim.SGD([{"params": params[:3], "lr": 0.01}, {"params": params[3:], "lr": 0.04}], lr=0.01)
    anchor = Anchor(model, l2sp=10.0)
    anchor.attach(opt)
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    for i, (p, w0) in enumerate(zip(params, start)):
        lr = 0.01 if i < 3 else 0.04
        stepped = w0 - lr * p.grad
        torch.testing.assert_close(p.detach(), w0 + (stepped - w0) * (1 - lr * 10.0), rtol=0, atol=1e-6)
    anchor.detach()
    after = [p.detach().clone() for p in params]
    opt.step()
    torch.testing.assert_close(params[0].detach(), after[0] - 0.01 * params[0].grad, rtol=0, atol=1e-7)


def test_bad_anchor_settings_are_one_line_errors():
    model = _lora(make_tiny_llama(), init_lora_weights=False)
    with pytest.raises(ValueError, match=r"start at dW = s\*B\*A = 0 .* non-zero dW"):
        Anchor(model, l2sp=1.0)
    with pytest.raises(ValueError, match="l2sp must be a finite number >= 0"):
        AnchorCallback(l2sp=-1.0)
    anchor = Anchor(make_tiny_llama(), l2sp=100.0)
    with pytest.raises(ValueError, match="would overshoot the starting weights; lower l2sp below 1 / learning_rate"):
        anchor.apply(0.1)
    with pytest.raises(ValueError, match="cpt.replay must be 0 .* set sft.replay instead"):
        resolve({"cpt": {"replay": 0.1}})
    with pytest.raises(ValueError, match=r"replay is the share .* in \[0, 1\); got 1.0"):
        resolve({"sft": {"replay": 1.0}})


def _trainer(model, callbacks, lr=0.05, steps=4):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (16, 12), generator=g).tolist()
    args = TrainingArguments(
        output_dir="/tmp/layerprobe-anchor-test",
        per_device_train_batch_size=4,
        learning_rate=lr,
        max_steps=steps,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
        data_collator=default_data_collator,
        callbacks=callbacks,
    )


def test_in_the_trainer_the_recorded_drift_respects_the_cap(tmp_path):
    from layerprobe.record.recorder_callback import RecorderCallback
    from layerprobe.record.records import load_records

    cap = 2e-3
    trainer = _trainer(
        make_tiny_llama(),
        [RecorderCallback(tmp_path, phase="sft", drift_every=1, update_every=1), AnchorCallback(drift_cap=cap)],
    )
    trainer.train()
    rec = load_records(tmp_path)
    drift = rec[(rec["quantity"] == "drift_ratio") & (rec["param"] != "")]
    assert len(drift) > 0 and drift["value"].max() <= cap * (1 + 1e-4)
    assert (drift["value"] > cap * 0.999).mean() > 0.5  # lr 0.05 moves most weights past the cap: it binds


def test_l2sp_of_one_over_lr_pins_the_weights_and_zero_changes_nothing():
    model = make_tiny_llama()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _trainer(model, [AnchorCallback(l2sp=1 / 0.05)]).train()  # (1 - lr * l2sp) = 0: back to the start each step
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), start[n], rtol=0, atol=1e-7)

    plain, anchored = make_tiny_llama(), make_tiny_llama()
    _trainer(plain, []).train()
    _trainer(anchored, [AnchorCallback()]).train()
    for (n, p), q in zip(plain.named_parameters(), anchored.parameters()):
        assert torch.equal(p, q), n


# -- replay -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_tok():
    from layerprobe.sources.toyworld.tokenizer import build_tokenizer

    return build_tokenizer(["山田太郎の出身地は札幌です。", "拙者は医師でござる。犬が公園にいます。"] * 4, 300)


def test_replay_adds_the_share_of_cpt_documents_tokenized_as_cpt_reads_them(tmp_path, toy_tok):
    from layerprobe.train.models import make_trainable
    from layerprobe.train.stages import sft_trainer

    rows = [
        {
            "prompt": [{"role": "user", "content": f"質問{i}？"}],
            "completion": [{"role": "assistant", "content": f"答え{i}でござる。"}],
        }
        for i in range(9)
    ]
    docs = [f"{i}番目の文書。" + "山田太郎の出身地は札幌です。" * (1 + i) for i in range(5)]
    plain_cfg = resolve({"sft": {"max_steps": 1, "max_length": 40}})
    cfg = resolve({"sft": {"max_steps": 1, "max_length": 40, "replay": 0.25}})
    plain = sft_trainer(
        plain_cfg, make_trainable(make_tiny_llama(vocab=len(toy_tok)), cfg.sft, 0)[0], toy_tok, rows, tmp_path
    )
    mixed = sft_trainer(
        cfg,
        make_trainable(make_tiny_llama(vocab=len(toy_tok)), cfg.sft, 0)[0],
        toy_tok,
        rows,
        tmp_path,
        replay_docs=docs,
    )
    assert mixed.replayed == 3 and len(mixed.train_dataset) == 12  # 3 / 12 = 25 %
    for a, b in zip(plain.train_dataset, mixed.train_dataset):
        assert (a["input_ids"], a["labels"]) == (b["input_ids"], b["labels"])  # SFT rows exactly as trl made them
    cpt_rows = {tuple((toy_tok(d)["input_ids"] + [toy_tok.eos_token_id])[:40]) for d in docs}
    replayed = [mixed.train_dataset[i] for i in range(9, 12)]
    assert len({tuple(r["input_ids"]) for r in replayed}) == 3  # drawn without replacement
    for r in replayed:
        assert tuple(r["input_ids"]) in cpt_rows and r["labels"] == r["input_ids"]  # loss on every token
    with pytest.raises(ValueError, match="sft.replay=0.25 needs CPT documents to replay, got none"):
        sft_trainer(cfg, make_trainable(make_tiny_llama(vocab=len(toy_tok)), cfg.sft, 0)[0], toy_tok, rows, tmp_path)


@pytest.mark.slow
def test_train_with_replay_and_a_drift_cap_from_the_command_line(tmp_path, monkeypatch, capsys):
    import yaml
    from test_pipeline import SHORT

    from layerprobe import cli
    from layerprobe.record.records import load_records

    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(SHORT))
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "--record",
            "--config",
            str(tmp_path / "short.yaml"),
            "--out",
            str(out),
            "--eval.base",
            "false",
            "--sft.replay",
            "0.2",
            "--sft.drift_cap",
            "0.002",
            "--sft.l2sp",
            "1",
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    assert "l2sp=1, drift_cap=0.002) on 24 instructions, loss on answers only, plus 6 replayed CPT documents" in stdout
    rec = load_records(out)
    drift = rec[
        (rec["phase"] == "sft") & (rec["quantity"] == "drift_ratio") & ~rec["param"].str.endswith(("lora_A", "lora_B"))
    ]  # effective weights and their aggregates
    assert len(drift) > 0 and drift["value"].max() <= 0.002 * (1 + 1e-4)
    assert (out / "summary.json").is_file()
