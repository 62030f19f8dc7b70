"""A byte-level BPE tokenizer for the toy world, with a chat template that marks the assistant's tokens."""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}
ROLES = ("<|system|>", "<|user|>", "<|assistant|>")

# Merges never cross a change of script, so a prompt cut before an answer ("…の出身地は|札幌") ends on the
# same token boundary as the training text.
SCRIPT_RUNS = r"\p{Han}+|\p{Hiragana}+|[\p{Katakana}ー]+|\p{N}+|\s+|[^\p{Han}\p{Hiragana}\p{Katakana}ー\p{N}\s]+"

# The assistant turn ends with EOS inside the generation markers, so SFT learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|>{% generation %}{{ m['content'] }}<|eos|>{% endgeneration %}"
    "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on ``texts``: 256 bytes + special/role tokens + merges up to ``vocab_size``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL.values()) + list(ROLES)
    if vocab_size < 256 + len(specials):
        raise ValueError(f"a byte-level tokenizer needs vocab_size >= {256 + len(specials)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SCRIPT_RUNS), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer)
    # Like Llama tokenizers, every encoded text starts with BOS, so a probe starts as a document does.
    bos = tok.token_to_id(SPECIAL["bos_token"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos_token']} $A",
        pair=f"{SPECIAL['bos_token']} $A $B",
        special_tokens=[(SPECIAL["bos_token"], bos)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **SPECIAL, additional_special_tokens=list(ROLES), clean_up_tokenization_spaces=False
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
