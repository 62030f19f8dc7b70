"""The models the stages train: the config's model folder, loading a model and its tokenizer, making it trainable
(a new LoRA adapter or unfrozen weights, where ``select`` or the target modules say), saving a trained one, and the
training precision.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from layerprobe.core.config import TrainConfig
from layerprobe.core.config_data import TOYWORLD
from layerprobe.core.config_phase import PhaseConfig
from layerprobe.sources.presets import resolve_model
from layerprobe.sources.toyworld.base import ensure_base
from layerprobe.train.select import apply_requires_grad, lora_targets

# A chat template for tokenizers that have none (base models): assistant turns end with EOS, inside
# generation markers, so SFT learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}### assistant:\n{% generation %}{{ m['content'] }}{{ eos_token }}"
    "{% endgeneration %}\n"
    "{% else %}### {{ m['role'] }}:\n{{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


# -- models ------------------------------------------------------------------------------------------------------


def model_folder(spec: str, cfg: TrainConfig | None = None, progress: bool = False) -> str:
    """The local folder of the config's ``model``: the toy world's base model for 'toyworld' (built once and
    cached, from ``cfg.toy``), else :func:`layerprobe.sources.presets.resolve_model` (a folder, a preset, a hub
    name)."""
    if spec == TOYWORLD:
        return str(ensure_base((cfg or TrainConfig()).toy, progress=progress))
    return resolve_model(spec)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = FALLBACK_CHAT_TEMPLATE
    return tok


def load_model(path: str, adapter: str | None = None):
    """A causal LM in float32 (on the GPU when there is one), optionally with a LoRA adapter attached."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if torch.cuda.is_available():
        model = model.to("cuda")  # type: ignore[arg-type]
    if adapter:
        from peft import PeftModel

        untie_embeddings(model, json.loads((Path(adapter) / "adapter_config.json").read_text())["target_modules"])
        return PeftModel.from_pretrained(model, adapter)
    return model


def untie_embeddings(model, target_modules) -> bool:
    """Give a tied output head its own copy of the input embedding when LoRA adapts either of them.

    With the two tied, peft would merge both LoRA deltas into the one shared tensor, so the merged model
    would differ from the trained one. Untied, each keeps its own delta. Returns whether it untied.
    """
    import torch

    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is not emb.weight:
        return False
    leaf = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    if not {leaf.get(id(emb)), leaf.get(id(head))} & set(target_modules):
        return False
    head.weight = torch.nn.Parameter(emb.weight.detach().clone())
    model.config.tie_word_embeddings = False
    model.config.get_text_config().tie_word_embeddings = False
    return True


def use_cpu() -> bool:
    """Whether training runs on the CPU (no GPU here)."""
    import torch

    return not torch.cuda.is_available()


def make_trainable(model, phase: PhaseConfig, seed: int) -> tuple[Any, str]:
    """Wrap ``model`` in a new LoRA adapter (phase.method == 'lora') or unfreeze it (full): ``phase.select`` or
    the phase's target modules say where. Returns (the model to train, a description of the selection: what full
    fine-tuning with ``select`` unfroze, else '')."""
    from transformers import set_seed

    set_seed(seed)
    if phase.method == "full":
        if phase.select:
            return model, apply_requires_grad(model, phase.select).describe()
        for p in model.parameters():
            p.requires_grad_(True)
        return model, ""
    from peft import LoraConfig, get_peft_model

    targets, layers = list(phase.target_modules), phase.layers_to_transform
    if phase.select:
        compiled = lora_targets(model, phase.select)
        targets, layers = compiled["target_modules"], compiled["layers_to_transform"]
    else:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in targets if t not in names]
        if missing:
            leaves = sorted(n for n in names if n and not n.isdigit())
            raise ValueError(f"target_modules {missing} not found in the model; its module names include {leaves}")
    leaf_names = targets if isinstance(targets, list) else [m for m in ("embed_tokens", "lm_head") if m in targets]
    untie_embeddings(model, leaf_names)
    lcfg = LoraConfig(
        r=phase.r,
        lora_alpha=phase.lora_alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=phase.lora_dropout,
        target_modules=targets,
        use_rslora=phase.use_rslora,
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg), ""


def save_model(model, tok, out: Path, phase: PhaseConfig) -> None:
    """Save a trained phase's model as the stage does: the adapter (LoRA) or the whole model, and the tokenizer."""
    if phase.method == "lora":  # the adapter only: the base's embeddings are unchanged, so not copied in
        model.save_pretrained(out, save_embedding_layers=False)
    else:
        model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def bf16_supported() -> bool:
    """Whether bfloat16 autocast runs natively here: a GPU that supports it, or a CPU with AVX512-BF16 or AMX."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


# Below this width bf16 autocast costs more than it saves on a CPU: measured +19 % a step for the toy model (hidden
# 128, benchmarks/results/precision_toy.json), a saving for SmolLM2 (hidden 576, precision_smollm2.json).
BF16_MIN_HIDDEN = 512


def resolve_precision(precision: str, hidden_size: int | None = None) -> tuple[bool, str]:
    """(train in bf16 autocast?, a line saying which precision runs and why) for a model of ``hidden_size``."""
    if precision == "fp32":
        return False, "fp32 (precision: fp32)"
    bf16 = "bf16 autocast, fp32 master weights and optimizer state"
    if precision == "bf16":
        return True, f"{bf16} (precision: bf16)"
    if not bf16_supported():
        return False, "fp32 (auto: no native bfloat16 on this device)"
    if hidden_size is not None and hidden_size < BF16_MIN_HIDDEN:
        return False, f"fp32 (auto: hidden size {hidden_size} < {BF16_MIN_HIDDEN}, too small for bf16 to pay)"
    return True, f"{bf16} (auto: this device supports bfloat16)"


def hidden_size(model_dir: str) -> int | None:
    """The ``hidden_size`` in a model folder's config.json (None when absent)."""
    f = Path(model_dir) / "config.json"
    return json.loads(f.read_text()).get("hidden_size") if f.is_file() else None


def trainable_share(model) -> tuple[int, float]:
    """Trainable parameters and their share of the model's own (non-adapter) parameters, tied tensors once."""
    params = list(model.named_parameters())
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    own = sum(p.numel() for n, p in params if "lora_" not in n)
    return trainable, trainable / own if own else math.nan
