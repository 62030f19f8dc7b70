"""Shared fixtures: tiny models built in-process (no downloads)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("LAYERPROBE_CHECK_FIGURES", "raise")  # every figure a test draws fails on overlapping texts
if os.environ.get("PYTEST_XDIST_WORKER"):
    # README's `-n auto` starts one worker per core: each keeps to one thread, as threads beyond the cores make
    # OpenMP and OpenBLAS wait out scheduler slices (tests that need another count set it themselves)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


def _fresh_tqdm_lock() -> None:
    if "tqdm" in sys.modules:  # a child forked while tqdm's write lock was held would wait on it for ever
        sys.modules["tqdm"].tqdm.set_lock(threading.RLock())


os.register_at_fork(after_in_child=_fresh_tqdm_lock)  # mutmut forks a test process per mutant


def make_tiny_llama(hidden: int = 32, layers: int = 2, vocab: int = 64, seed: int = 0, tie: bool = False):
    """A Llama-architecture causal LM small enough to check every number by hand."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


def tiny_model_and_tokenizer(texts: list[str], vocab: int = 300):
    """A random 2-layer Llama (hidden 32) with a byte-level BPE tokenizer trained on ``texts``, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from layerprobe.sources.toyworld.tokenizer import build_tokenizer

    tok = build_tokenizer(texts, vocab)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def pytest_collection_modifyitems(config, items):
    """Modules that hold slow tests run first, each whole and in its own order: under pytest-xdist (README's
    ``-n auto --dist loadfile``) the long ones start at once instead of leaving one worker a tail."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
