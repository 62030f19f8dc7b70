"""The training stages: CPT (LoRA or full), merge (with a check of the merged weights), SFT (LoRA or full).

Each stage reads its inputs from folders, writes its outputs into one folder, and returns a small info dict
(what it did, optimizer steps, seconds). Recording is a ``RecorderCallback`` passed in by the caller.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from layerprobe.core.config import TrainConfig
from layerprobe.core.config_phase import PhaseConfig
from layerprobe.core.names import parse_name
from layerprobe.core.rundir import DONE, STARTED, checkpoint_dir, last_checkpoint
from layerprobe.sources.data import pack_texts
from layerprobe.train.models import (
    load_model,
    load_tokenizer,
    make_trainable,
    resolve_precision,
    save_model,
    trainable_share,
    use_cpu,
)

MERGE_TOLERANCE = 1e-5


def _training_args(phase: PhaseConfig, out: Path, seed: int, bf16: bool = False, **extra):
    return dict(
        output_dir=str(checkpoint_dir(out)),
        per_device_train_batch_size=phase.batch_size,
        gradient_accumulation_steps=phase.grad_accum,
        learning_rate=phase.learning_rate,
        num_train_epochs=phase.epochs,
        max_steps=phase.max_steps,
        lr_scheduler_type=phase.lr_scheduler,
        warmup_steps=phase.warmup_ratio,
        weight_decay=phase.weight_decay,
        max_grad_norm=phase.max_grad_norm,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu(),
        bf16=bf16,
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        **extra,
    )


def progress_bar(name: str):
    """A one-line tqdm bar for a Trainer (steps, loss), erased when training ends."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, desc=f"  {name}", unit="step", leave=False)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return Bar()


def _train(trainer) -> None:
    """Train without the Trainer's own printing (the progress bar and the stage line say enough)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train(resume_from_checkpoint=resume_point(trainer))


def resume_point(trainer) -> str | None:
    """The newest complete checkpoint of this phase (left by a killed attempt), or None: start from step 0."""

    found = last_checkpoint(Path(trainer.args.output_dir).parent)
    return str(found) if found else None


def _describe(phase: PhaseConfig, selection: str = "") -> str:
    what = f"lora r={phase.r} alpha={phase.lora_alpha:g}" if phase.method == "lora" else "full fine-tuning"
    if phase.select:
        what += f", {selection or 'select ' + repr(phase.select)}"
    if phase.l2sp:
        what += f", l2sp={phase.l2sp:g}"
    if phase.drift_cap:
        what += f", drift_cap={phase.drift_cap:g}"
    return what


def _phase_callbacks(phase: PhaseConfig, callbacks, name: str, progress: bool) -> list:
    """The caller's callbacks, the anchor when the phase asks for one, and a progress bar."""
    out = list(callbacks)
    if phase.l2sp or phase.drift_cap:
        from layerprobe.weights.anchor import AnchorCallback

        out.append(AnchorCallback(l2sp=phase.l2sp, drift_cap=phase.drift_cap))
    return out + ([progress_bar(name)] if progress else [])


def _info(trainer, t0: float, what: str, out: Path) -> dict:
    logs = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainable, share = trainable_share(trainer.model)
    return {
        "what": what,
        "out": str(out),
        "steps": int(trainer.state.global_step),
        "trainable_params": trainable,
        "trainable_share": share,
        "tokens": int(trainer.state.num_input_tokens_seen),
        "precision": "bf16" if trainer.args.bf16 else "fp32",
        "final_loss": logs[-1] if logs else math.nan,
        "loss_curve": logs,
        "seconds": round(time.time() - t0, 1),
    }


# -- CPT -----------------------------------------------------------------------------------------------------------


def cpt_trainer(cfg: TrainConfig, model, tok, docs: list[str], out: Path, callbacks=(), bf16: bool | None = None):
    """A Trainer for CPT of ``model`` (made trainable by :func:`make_trainable`) on ``docs`` (packed blocks), as
    :func:`run_cpt` trains; ``bf16=None`` follows ``cfg.precision``. Returns (trainer, number of blocks)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    blocks = pack_texts(tok, docs, cfg.cpt.max_length)
    if not blocks:
        raise ValueError("the CPT data holds no text; expected documents with at least one token")
    if bf16 is None:
        bf16 = resolve_precision(cfg.precision, model.config.hidden_size)[0]
    args = TrainingArguments(**_training_args(cfg.cpt, out, cfg.phase_seed(cfg.cpt), bf16))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": blocks, "labels": blocks}),
        data_collator=default_data_collator,
        callbacks=list(callbacks),
    )
    return trainer, len(blocks)


def run_cpt(cfg: TrainConfig, base: str, docs: list[str], out: Path, callbacks=(), progress: bool = False) -> dict:
    """Continued pretraining of ``base`` on ``docs`` (next-token prediction); saves the adapter or model in ``out``."""
    t0 = time.time()
    phase = cfg.cpt
    tok = load_tokenizer(base)
    model, selection = make_trainable(load_model(base), phase, cfg.phase_seed(phase))
    trainer, blocks = cpt_trainer(cfg, model, tok, docs, out, _phase_callbacks(phase, callbacks, "cpt", progress))
    _train(trainer)
    save_model(trainer.model, tok, out, phase)
    what = (
        f"CPT ({_describe(phase, selection)}) on {len(docs)} documents ({blocks} blocks of {phase.max_length} tokens)"
    )
    return _info(trainer, t0, what, out)


# -- merge ---------------------------------------------------------------------------------------------------------


def run_merge(base: str, cpt_dir: Path, out: Path) -> dict:
    """Merge the CPT LoRA into the base weights and save the CPT model (safetensors + tokenizer) in ``out``.

    The saved weights are checked against ``base + s * B @ A`` computed from the adapter file.
    A fully fine-tuned CPT model is copied as it is.
    """
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if not (cpt_dir / "adapter_config.json").is_file():
        for f in cpt_dir.iterdir():
            if f.is_file() and f.name not in (DONE, STARTED):  # the CPT stage's markers are not the merge's
                shutil.copy2(f, out / f.name)
        return {
            "what": "full fine-tuning: the CPT model is already whole, copied",
            "out": str(out),
            "seconds": round(time.time() - t0, 1),
            "check": None,
        }
    model = load_model(base, adapter=str(cpt_dir)).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(str(cpt_dir)).save_pretrained(out)
    del model
    check = check_merge(base, cpt_dir, out)
    if not check["ok"]:
        raise ValueError(
            f"merged weights differ from base + s*B*A by {check['max_abs_diff']:.3g} "
            f"(tolerance {MERGE_TOLERANCE:g}) in {check['worst']}; the merge is wrong"
        )
    what = (
        f"merged {check['lora_modules']} LoRA modules; max |merged - (base + s*B*A)| = "
        f"{check['max_abs_diff']:.2g} <= {MERGE_TOLERANCE:g}, other weights unchanged"
    )
    return {"what": what, "out": str(out), "seconds": round(time.time() - t0, 1), "check": check}


def _read_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}; expected a saved model folder")
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def check_merge(base: str, adapter_dir: Path, merged_dir: Path) -> dict:
    """Compare merged weights with ``base + s * B @ A`` (embeddings: ``(B @ A).T``), tensor by tensor.

    A base with tied embeddings has no head tensor of its own; the merged model (untied, see
    :func:`layerprobe.train.models.untie_embeddings`) starts its head from the base's embedding.
    """

    acfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    r, alpha = acfg["r"], acfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
    base_w, merged, lora = _read_weights(Path(base)), _read_weights(merged_dir), _read_weights(adapter_dir)
    expected = {k: v.double() for k, v in base_w.items()}
    for name in set(merged) - set(base_w):
        if parse_name(name).block == "head":
            embedding = next(k for k in base_w if parse_name(k).block == "embed" and k.endswith(".weight"))
            expected[name] = expected[embedding].clone()
    modules = 0
    for key, a in lora.items():
        p = parse_name(key)
        if p.lora != "A":
            continue
        b = lora[key.replace("lora_embedding_A", "lora_embedding_B").replace(".lora_A.", ".lora_B.")]
        delta = b.double() @ a.double()
        if "lora_embedding_A" in key:  # peft stores embedding factors transposed
            delta = delta.T
        if p.canonical not in expected:
            raise ValueError(f"adapter tensor {key} adapts {p.canonical}, which the base model does not have")
        expected[p.canonical] = expected[p.canonical] + scale * delta
        modules += 1
    worst, max_diff = "", 0.0
    for name, want in expected.items():
        got = merged.get(name)
        if got is None:
            raise ValueError(f"the merged model lacks {name}, which the base model has")
        diff = float((got.double() - want).abs().max()) if want.numel() else 0.0
        if diff > max_diff:
            worst, max_diff = name, diff
    return {
        "ok": max_diff <= MERGE_TOLERANCE,
        "max_abs_diff": max_diff,
        "worst": worst,
        "lora_modules": modules,
        "scale": scale,
        "tensors": len(expected),
    }


# -- SFT -----------------------------------------------------------------------------------------------------------


def sft_trainer(cfg: TrainConfig, model, tok, rows: list[dict], out: Path, callbacks=(), replay_docs=()):
    """A ``trl.SFTTrainer`` on prompt/completion chats with the loss on the completions only, plus
    ``cfg.sft.replay`` as a share of CPT documents (see :func:`add_replay`)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **_training_args(
            cfg.sft,
            out,
            cfg.phase_seed(cfg.sft),
            resolve_precision(cfg.precision, model.config.hidden_size)[0],
            max_length=cfg.sft.max_length,
            completion_only_loss=True,
            packing=False,
            dataset_num_proc=None,
            train_sampling_strategy="group_by_length" if cfg.sft.group_by_length else "random",
        )
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=list(callbacks)
    )
    trainer.replayed = (  # type: ignore[attr-defined]  # read by the pipeline's log
        add_replay(trainer, tok, list(replay_docs), cfg.sft.replay, cfg.sft.max_length, cfg.phase_seed(cfg.sft))
        if cfg.sft.replay
        else 0
    )
    return trainer


def add_replay(trainer, tok, docs: list[str], share: float, max_length: int, seed: int) -> int:
    """Append CPT documents to the SFT trainer's tokenized rows so they make up ``share`` of them.

    Each document is one row tokenized as CPT reads it (its tokens, then EOS, cut at ``max_length``) with the
    loss on every token; the SFT rows stay exactly as trl prepared them. Documents are drawn without
    replacement (cycled when more are needed than there are). Returns the number of rows added.
    """
    import random

    from datasets import Dataset, concatenate_datasets

    if not docs:
        raise ValueError(
            f"sft.replay={share} needs CPT documents to replay, got none; set sft.replay to 0 or give CPT data"
        )
    sft = trainer.train_dataset.select_columns(["input_ids", "labels"])
    n = round(len(sft) * share / (1.0 - share))
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    picked = [docs[order[i % len(order)]] for i in range(n)]
    ids = [(enc + [tok.eos_token_id])[:max_length] for enc in tok(picked)["input_ids"]] if n else []
    extra = Dataset.from_dict({"input_ids": ids, "labels": ids}, features=sft.features)
    trainer.train_dataset = concatenate_datasets([sft, extra])
    return n


def run_sft(
    cfg: TrainConfig, cpt_model: str, rows: list[dict], out: Path, callbacks=(), progress: bool = False, replay_docs=()
) -> dict:
    """Supervised fine-tuning of the CPT model on prompt/completion chats; loss on the completions only."""
    t0 = time.time()
    phase = cfg.sft
    if not rows:
        raise ValueError("the SFT data holds no rows; expected prompt/completion, messages or instruction/output rows")
    tok = load_tokenizer(cpt_model)
    model, selection = make_trainable(load_model(cpt_model), phase, cfg.phase_seed(phase))
    trainer = sft_trainer(cfg, model, tok, rows, out, _phase_callbacks(phase, callbacks, "sft", progress), replay_docs)
    _train(trainer)
    save_model(model, tok, out, phase)
    what = f"SFT ({_describe(phase, selection)}) on {len(rows)} instructions, loss on answers only"
    if phase.replay:
        what += f", plus {trainer.replayed} replayed CPT documents ({phase.replay:.0%} of the rows)"
    return _info(trainer, t0, what, out)
