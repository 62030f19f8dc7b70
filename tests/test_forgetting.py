"""Forgetting metrics against a plain one-sequence-at-a-time reference on a tiny model and word-level tokenizer."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import make_tiny_llama

from layerprobe.evaluation.forgetting import DEFAULT_PROMPT, choice_logprobs, heldout_loss, mc_accuracy

WORDS = ["[UNK]", "[PAD]", "[BOS]", "質問", "答え", ":", "Q", "A", "?"] + [f"w{i}" for i in range(40)]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]")


def ref_ids(text: str) -> list[int]:
    """What the word-level tokenizer does, by hand: words and runs of punctuation, unknown -> [UNK]."""
    return [WORDS.index(w) if w in WORDS else 0 for w in re.findall(r"\w+|[^\w\s]+", text)]


def ref_logprob(model, context_ids: list[int], choice_ids: list[int]) -> float:
    ids = torch.tensor([context_ids + choice_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(float(logp[len(context_ids) - 1 + j, t]) for j, t in enumerate(choice_ids))


def make_rows(n: int = 6, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def words(k):
        return " ".join(f"w{int(i)}" for i in torch.randint(0, 40, (k,), generator=g))

    rows = []
    for i in range(n):
        # choices of 1 to 3 words, so summed and mean scores rank them differently
        row = {"question": words(2 + i % 3), "label": int(torch.randint(0, 4, (1,), generator=g))}
        row.update({f"choice{j}": words(1 + (i + j) % 3) for j in range(4)})
        rows.append(row)
    return rows


def make_tiny_gpt2(vocab: int, seed: int = 1):
    """Absolute position embeddings: wrong position ids under left padding would change its scores."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    make = make_tiny_llama if request.param == "llama" else make_tiny_gpt2
    return make(vocab=len(WORDS) + 15, seed=1).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def reference(model):
    rows = make_rows()
    out = []
    for r in rows:
        ctx = [2] + ref_ids(DEFAULT_PROMPT.format(**r))
        out.append(
            [(ref_logprob(model, ctx, ref_ids(r[f"choice{j}"])), len(ref_ids(r[f"choice{j}"]))) for j in range(4)]
        )
    return rows, out


@pytest.mark.parametrize("batch_size,padding_side", [(1, "right"), (4, "right"), (4, "left"), (64, "left")])
def test_choice_logprobs_match_reference(model, tokenizer, reference, batch_size, padding_side):
    rows, ref = reference
    got = choice_logprobs(model, tokenizer, rows, batch_size=batch_size, padding_side=padding_side)
    assert [[n for _, n in row] for row in got] == [[n for _, n in row] for row in ref]
    for g_row, r_row in zip(got, ref):
        for (g, _), (r, _) in zip(g_row, r_row):
            assert g == pytest.approx(r, abs=1e-4)


def test_mc_accuracy_matches_reference_argmax(model, tokenizer, reference):
    rows, ref = reference
    by_sum = [max(range(4), key=lambda j: row[j][0]) for row in ref]
    by_mean = [max(range(4), key=lambda j: row[j][0] / row[j][1]) for row in ref]
    assert by_sum != by_mean, "the fixture should make sum and mean disagree somewhere"
    # labels chosen so that the two accuracies differ: right by sum on every row
    rows = [dict(r, label=y) for r, y in zip(rows, by_sum)]
    res_sum = mc_accuracy(model, tokenizer, rows, batch_size=3)
    res_mean = mc_accuracy(model, tokenizer, rows, batch_size=3, normalize="mean")
    expected_mean = sum(a == b for a, b in zip(by_sum, by_mean)) / len(rows)
    assert res_sum["acc"] == 1.0 and res_sum["acc_sum"] == 1.0
    assert res_mean["acc"] == res_sum["acc_mean"] == pytest.approx(expected_mean)
    assert res_sum["n"] == 6 and res_sum["n_choices"] == 4 and res_sum["chance"] == 0.25
    assert res_sum["gold_logprob"] == pytest.approx(sum(row[y][0] for row, y in zip(ref, by_sum)) / 6, abs=1e-4)


def test_custom_prompt_and_model_mode_restored(model, tokenizer):
    rows = make_rows(3)
    model.train()
    try:
        got = choice_logprobs(model, tokenizer, rows, prompt="Q {question} ? A :")
        assert model.training
    finally:
        model.eval()
    for r, row in zip(rows, got):
        ctx = [2] + ref_ids(f"Q {r['question']} ? A :")
        assert row[1][0] == pytest.approx(ref_logprob(model, ctx, ref_ids(r["choice1"])), abs=1e-4)


@pytest.mark.parametrize(
    "rows,kwargs,match",
    [
        ([{"question": "w1", "choice0": "w2", "choice1": "w3", "label": 2}], {}, "label in 0..1"),
        (
            [
                {"question": "w1", "choice0": "w2", "choice1": "w3", "label": 0},
                {"question": "w1", "choice0": "w2", "label": 0},
            ],
            {},
            "same choice0",
        ),
        ([{"question": "w1", "choice0": "w2", "choice1": "w3", "label": 0}], {"normalize": "max"}, "normalize"),
        ([{"question": "w1", "choice0": "w2", "choice1": "w3", "label": 0}], {"prompt": "{topic}"}, "topic"),
        ([], {}, "at least one"),
    ],
)
def test_mc_accuracy_rejects_bad_input(model, tokenizer, rows, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mc_accuracy(model, tokenizer, rows, **kwargs)


def ref_heldout(model, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """Token by token: token t is scored given ids[b:t], b the first window start with b < t < b + max_length."""
    total, n = 0.0, 0
    for t in range(1, len(ids)):
        starts = [b for b in range(0, len(ids), stride) if b < t < b + max_length]
        if not starts:
            continue
        b = starts[0]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[b:t]])).logits[0, -1].double(), -1)
        total -= float(logp[ids[t]])
        n += 1
    return total, n


@pytest.mark.parametrize("max_length,stride", [(8, None), (8, 3), (8, 8), (64, None), (5, 1)])
def test_heldout_loss_matches_token_by_token_reference(model, tokenizer, max_length, stride):
    g = torch.Generator().manual_seed(3)
    texts = [" ".join(f"w{int(i)}" for i in torch.randint(0, 40, (k,), generator=g)) for k in (20, 9, 1, 14)]
    total, n = 0.0, 0
    for text in texts:
        t, k = ref_heldout(model, [2] + ref_ids(text), max_length, stride or max_length)
        total, n = total + t, n + k
    for batch_size in (1, 3):
        got = heldout_loss(model, tokenizer, texts, max_length=max_length, stride=stride, batch_size=batch_size)
        assert got["n_tokens"] == n
        assert got["loss"] == pytest.approx(total / n, abs=1e-5)
        assert got["ppl"] == pytest.approx(math.exp(total / n), rel=1e-5)
    if (stride is not None and stride < max_length) or max_length >= 21:
        assert n == sum(len(ref_ids(t)) for t in texts)  # overlapping windows score every token after the first


def test_heldout_loss_rejects_bad_input(model, tokenizer):
    with pytest.raises(ValueError, match="stride"):
        heldout_loss(model, tokenizer, ["w1 w2"], max_length=4, stride=5)
    with pytest.raises(ValueError, match="list of texts"):
        heldout_loss(model, tokenizer, "w1 w2 w3")
    with pytest.raises(ValueError, match="at least 2 tokens"):
        heldout_loss(model, tokenizer, ["", ""], add_special_tokens=False)
