"""The one layer-name parser: parameter name -> (canonical name, layer, block, module).

Every stage (recorder, diff, selectors, plots) goes through :func:`parse_name`, so a tensor has the
same canonical name in a base checkpoint, a peft-wrapped model, a LoRA adapter file and a merged
checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

BLOCKS = ("embed", "attn", "mlp", "norm", "head", "other")

# peft wraps names in these; they are dropped from canonical names.
_PEFT_PREFIX = re.compile(r"^(?:base_model\.model\.)+")
# `...q_proj.lora_A.default.weight`, `...embed_tokens.lora_embedding_B.default`, `...lora_A.weight` (saved adapters)
_LORA = re.compile(
    r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(?:\.(?!(?:weight|bias)$)([^.]+))?(?:\.(weight|bias))?$"
)
_WRAPPERS = re.compile(r"\.(?:base_layer|original_module|modules_to_save\.[^.]+)(?=\.)")
# A stack of decoder blocks: model.layers.N, transformer.h.N, gpt_neox.layers.N, encoder.layer.N, blocks.N
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block|decoder_layers)\.(\d+)\.")

_EMBED = {
    "embed_tokens",
    "wte",
    "wpe",
    "embed_in",
    "word_embeddings",
    "embed_positions",
    "position_embeddings",
    "token_type_embeddings",
    "embeddings",
    "tok_embeddings",
    "shared",
}
_HEAD = {"lm_head", "embed_out", "score", "output"}
_ATTN_PARENTS = {"self_attn", "attn", "attention", "self_attention", "cross_attn", "mixer"}
_MLP_PARENTS = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "experts", "shared_expert", "shared_experts"}
_ATTN_LEAVES = {
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "c_attn",
    "query_key_value",
    "query",
    "key",
    "value",
    "wq",
    "wk",
    "wv",
    "wo",
    "out_proj",
    "dense",
}
_MLP_LEAVES = {
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
    "c_fc",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "fc1",
    "fc2",
    "w1",
    "w2",
    "w3",
    "router",
    "gate",
}


@dataclass(frozen=True)
class ParamName:
    """A parsed parameter name.

    canonical: the name with peft's wrappers dropped (``model.layers.3.mlp.up_proj.weight``); for LoRA
        tensors, the name of the weight they adapt.
    layer: index in the decoder stack, or -1 outside it.
    block: one of ``embed, attn, mlp, norm, head, other``.
    module: the leaf module (``q_proj``, ``c_fc``, ``input_layernorm``, ``embed_tokens``).
    lora: ``"A"``/``"B"`` for LoRA factors (embedding factors too), ``"magnitude"`` for DoRA, else ``None``.
    adapter: peft adapter name when present in the name (``default``), else ``None``.
    """

    canonical: str
    layer: int
    block: str
    module: str
    lora: str | None = None
    adapter: str | None = None


@lru_cache(maxsize=65536)
def parse_name(name: str) -> ParamName:
    """Parse one parameter or tensor name (plain, peft-wrapped, adapter file, GPT-2, GPT-NeoX, Llama, MoE)."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"expected a non-empty parameter name such as 'model.layers.0.mlp.up_proj.weight', got {name!r}"
        )
    n = _PEFT_PREFIX.sub("", name)
    lora = adapter = None
    m = _LORA.search(n)
    if m:
        kind, adapter, suffix = m.groups()
        lora = "magnitude" if kind == "lora_magnitude_vector" else kind[-1]
        n = n[: m.start()] + "." + (suffix or "weight")  # lora_B.bias (lora_bias=True) adapts the bias
    n = _WRAPPERS.sub("", n)
    parts = n.split(".")
    if parts[-1] in ("weight", "bias") and len(parts) > 1:
        module_parts = parts[:-1]
    else:  # bare parameters such as `transformer.wpe` or `...experts.gate_up_proj` (fused MoE tensors)
        module_parts = parts
    module = module_parts[-1]
    m = _LAYER.search("." + n + ".") if module_parts else None
    layer = int(m.group(1)) if m else -1
    return ParamName(
        canonical=n, layer=layer, block=_block(module_parts, module, layer), module=module, lora=lora, adapter=adapter
    )


def _block(parts: list[str], module: str, layer: int) -> str:
    low = module.lower()
    if "norm" in low or low.startswith("ln_") or low in ("ln", "ln_f"):
        return "norm"
    if module in _EMBED:
        return "embed"
    if layer < 0 and module in _HEAD:
        return "head"
    parents = set(parts[:-1])
    if parents & _MLP_PARENTS:
        return "mlp"
    if parents & _ATTN_PARENTS:
        return "attn"
    if module in _MLP_LEAVES:
        return "mlp"
    if module in _ATTN_LEAVES:
        return "attn"
    return "other"
