"""The one layer-name parser, a case table per model family."""

import pytest

from layerprobe.core.names import parse_name

CASES = [
    # Llama / Mistral / Qwen2 / Gemma
    ("model.embed_tokens.weight", "model.embed_tokens.weight", -1, "embed", "embed_tokens", None),
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight", 0, "attn", "q_proj", None),
    ("model.layers.11.self_attn.o_proj.weight", "model.layers.11.self_attn.o_proj.weight", 11, "attn", "o_proj", None),
    ("model.layers.2.self_attn.k_proj.bias", "model.layers.2.self_attn.k_proj.bias", 2, "attn", "k_proj", None),
    ("model.layers.3.mlp.gate_proj.weight", "model.layers.3.mlp.gate_proj.weight", 3, "mlp", "gate_proj", None),
    ("model.layers.3.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight", 3, "mlp", "down_proj", None),
    (
        "model.layers.4.input_layernorm.weight",
        "model.layers.4.input_layernorm.weight",
        4,
        "norm",
        "input_layernorm",
        None,
    ),
    (
        "model.layers.4.post_attention_layernorm.weight",
        "model.layers.4.post_attention_layernorm.weight",
        4,
        "norm",
        "post_attention_layernorm",
        None,
    ),
    ("model.layers.5.self_attn.q_norm.weight", "model.layers.5.self_attn.q_norm.weight", 5, "norm", "q_norm", None),
    ("model.norm.weight", "model.norm.weight", -1, "norm", "norm", None),
    ("lm_head.weight", "lm_head.weight", -1, "head", "lm_head", None),
    # GPT-NeoX (rinna/japanese-gpt-neox-3.6b)
    ("gpt_neox.embed_in.weight", "gpt_neox.embed_in.weight", -1, "embed", "embed_in", None),
    (
        "gpt_neox.layers.7.attention.query_key_value.weight",
        "gpt_neox.layers.7.attention.query_key_value.weight",
        7,
        "attn",
        "query_key_value",
        None,
    ),
    ("gpt_neox.layers.7.attention.dense.bias", "gpt_neox.layers.7.attention.dense.bias", 7, "attn", "dense", None),
    (
        "gpt_neox.layers.7.mlp.dense_h_to_4h.weight",
        "gpt_neox.layers.7.mlp.dense_h_to_4h.weight",
        7,
        "mlp",
        "dense_h_to_4h",
        None,
    ),
    (
        "gpt_neox.layers.7.mlp.dense_4h_to_h.weight",
        "gpt_neox.layers.7.mlp.dense_4h_to_h.weight",
        7,
        "mlp",
        "dense_4h_to_h",
        None,
    ),
    (
        "gpt_neox.layers.0.input_layernorm.bias",
        "gpt_neox.layers.0.input_layernorm.bias",
        0,
        "norm",
        "input_layernorm",
        None,
    ),
    ("gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.weight", -1, "norm", "final_layer_norm", None),
    ("embed_out.weight", "embed_out.weight", -1, "head", "embed_out", None),
    # GPT-2: c_proj exists in both attn and mlp; the parent decides
    ("transformer.wte.weight", "transformer.wte.weight", -1, "embed", "wte", None),
    ("transformer.wpe.weight", "transformer.wpe.weight", -1, "embed", "wpe", None),
    ("transformer.h.1.ln_1.weight", "transformer.h.1.ln_1.weight", 1, "norm", "ln_1", None),
    ("transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight", 1, "attn", "c_attn", None),
    ("transformer.h.1.attn.c_proj.weight", "transformer.h.1.attn.c_proj.weight", 1, "attn", "c_proj", None),
    ("transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.weight", 1, "mlp", "c_fc", None),
    ("transformer.h.1.mlp.c_proj.bias", "transformer.h.1.mlp.c_proj.bias", 1, "mlp", "c_proj", None),
    ("transformer.ln_f.weight", "transformer.ln_f.weight", -1, "norm", "ln_f", None),
    # peft-wrapped: prefixes, base_layer, adapter names, saved adapters, embedding factors, modules_to_save
    (
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
        "model.layers.0.self_attn.q_proj.weight",
        0,
        "attn",
        "q_proj",
        None,
    ),
    (
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "model.layers.0.self_attn.q_proj.weight",
        0,
        "attn",
        "q_proj",
        "A",
    ),
    (
        "base_model.model.model.layers.9.mlp.up_proj.lora_B.my_adapter.weight",
        "model.layers.9.mlp.up_proj.weight",
        9,
        "mlp",
        "up_proj",
        "B",
    ),
    (
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
        "model.layers.0.self_attn.v_proj.weight",
        0,
        "attn",
        "v_proj",
        "A",
    ),
    (
        "base_model.model.model.embed_tokens.lora_embedding_A.default",
        "model.embed_tokens.weight",
        -1,
        "embed",
        "embed_tokens",
        "A",
    ),
    (
        "base_model.model.model.embed_tokens.lora_embedding_B",
        "model.embed_tokens.weight",
        -1,
        "embed",
        "embed_tokens",
        "B",
    ),
    ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head.weight", -1, "head", "lm_head", None),
    ("base_model.model.lm_head.original_module.weight", "lm_head.weight", -1, "head", "lm_head", None),
    (
        "base_model.model.transformer.h.2.attn.c_attn.lora_B.default.weight",
        "transformer.h.2.attn.c_attn.weight",
        2,
        "attn",
        "c_attn",
        "B",
    ),
    (
        "base_model.model.model.layers.3.self_attn.o_proj.lora_B.default.bias",
        "model.layers.3.self_attn.o_proj.bias",
        3,
        "attn",
        "o_proj",
        "B",
    ),
    # MoE experts belong to their decoder layer
    (
        "model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.layers.1.mlp.experts.0.gate_proj.weight",
        1,
        "mlp",
        "gate_proj",
        None,
    ),
    (
        "model.layers.1.block_sparse_moe.experts.7.w2.weight",
        "model.layers.1.block_sparse_moe.experts.7.w2.weight",
        1,
        "mlp",
        "w2",
        None,
    ),
    (
        "model.layers.1.block_sparse_moe.gate.weight",
        "model.layers.1.block_sparse_moe.gate.weight",
        1,
        "mlp",
        "gate",
        None,
    ),
    (
        "model.layers.2.mlp.experts.gate_up_proj",
        "model.layers.2.mlp.experts.gate_up_proj",
        2,
        "mlp",
        "gate_up_proj",
        None,
    ),
]


@pytest.mark.parametrize("name,canonical,layer,block,module,lora", CASES, ids=[c[0] for c in CASES])
def test_parse_name(name, canonical, layer, block, module, lora):
    p = parse_name(name)
    assert (p.canonical, p.layer, p.block, p.module, p.lora) == (canonical, layer, block, module, lora)


def test_base_lora_and_merged_names_align():
    """A peft-wrapped Llama's names map onto the plain model's names."""
    from conftest import make_tiny_llama
    from peft import LoraConfig, get_peft_model

    plain = {parse_name(n).canonical for n, _ in make_tiny_llama().named_parameters()}
    wrapped = get_peft_model(
        make_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"])
    )
    canon = {parse_name(n).canonical for n, _ in wrapped.named_parameters()}
    assert canon == plain


@pytest.mark.parametrize("bad", ["", None])
def test_bad_name(bad):
    with pytest.raises(ValueError, match="expected a non-empty parameter name"):
        parse_name(bad)
