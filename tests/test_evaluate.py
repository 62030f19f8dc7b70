"""Evaluation: answer matching, batched greedy generation and text loss against plain references."""

from __future__ import annotations

import math

import pytest
from conftest import tiny_model_and_tokenizer

from layerprobe.core.config_data import EvalConfig
from layerprobe.evaluation import evaluate as E

TEXTS = [
    "山田太郎の出身地は札幌です。山田太郎は1980年に生まれました。",
    "今日は晴れです。犬が公園にいます。",
    "青空化学の本社は大阪です。",
    "拙者は医師でござる。",
] * 3


@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("札幌です。", "札幌", True),
        ("ＳＡＰＰＯＲＯ です", "sapporo", True),  # NFKC + lower case
        ("１９８０年", "1980", True),  # full-width digits
        ("青空 化学、です", "青空化学", True),  # spaces and punctuation ignored
        ("「札幌」", "札幌", True),
        ("大阪です", "札幌", False),
        ("198", "1980", False),
        ("anything", "", False),  # an empty gold never matches
        ("anything", "。", False),  # nor one that normalises to nothing
    ],
)
def test_contains_answer(prediction, gold, expected):
    assert E.contains_answer(prediction, gold) is expected


def test_first_sentence():
    assert E.first_sentence("札幌です。山田は大阪") == "札幌です"
    assert E.first_sentence("no end") == "no end"
    assert E.first_sentence("a?b") == "a"


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_tokenizer(TEXTS)


def _reference_greedy(model, ids: list[int], budget: int, stops: set[int]) -> tuple[list[int], bool]:
    """Greedy decoding of one unpadded prompt with full forward passes (no cache, no batching)."""
    import torch

    out = []
    for _ in range(budget):
        with torch.no_grad():
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt in stops:
            return out, True
        out.append(nxt)
    return out, False


@pytest.mark.parametrize("chat", [False, True])
def test_batched_left_padded_generation_matches_one_by_one_greedy(tiny, chat):
    model, tok = tiny
    prompts = ["山田太郎の出身地は", "犬", "青空化学の本社は大阪です。今日は", "拙者は"]
    budget = 6

    def encode(p):
        return tok(E.chat_prompt(tok, p), add_special_tokens=False)["input_ids"] if chat else tok(p)["input_ids"]

    # pick a stop token that greedy decoding actually produces, so both EOS paths are exercised
    free = [_reference_greedy(model, encode(p), budget, set())[0] for p in prompts]
    stop = free[0][2]
    model.generation_config.eos_token_id = stop
    try:
        got = E.generate(model, tok, prompts, budget, batch_size=3, chat=chat)
    finally:
        model.generation_config.eos_token_id = tok.eos_token_id
    stops = {stop, tok.eos_token_id}
    for p, (text, eos) in zip(prompts, got):
        ids, ended = _reference_greedy(model, encode(p), budget, stops)
        assert (text, eos) == (tok.decode(ids, skip_special_tokens=True), ended)
    assert got[0] == (tok.decode(free[0][: free[0].index(stop)], skip_special_tokens=True), True)
    assert tok.padding_side == "right"  # restored


def test_text_loss_matches_per_document_cross_entropy(tiny):
    import torch

    model, tok = tiny
    docs = TEXTS[:4]
    total, count = 0.0, 0
    for d in docs:
        ids = torch.tensor([tok(d)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    assert E.text_loss(model, tok, docs, max_length=128, batch_size=3) == pytest.approx(total / count, rel=1e-5)
    assert math.isnan(E.text_loss(model, tok, [], 128, 3))


def test_metrics_are_the_shares_of_correct_answers(tiny, monkeypatch):
    model, tok = tiny
    probes = [
        {"kind": "cloze", "prompt": "A", "answer": "札幌"},
        {"kind": "cloze", "prompt": "B", "answer": "1980"},
        {"kind": "cloze", "prompt": "C", "answer": "大阪"},
        {"kind": "qa", "prompt": "D", "answer": "大阪"},
        {"kind": "qa", "prompt": "E", "answer": "医師"},
    ]
    instructions = [{"prompt": "F"}, {"prompt": "G"}, {"prompt": "H"}, {"prompt": "I"}]
    canned = {  # prompt -> (answer, ended with EOS)
        "A": ("札幌です。", False),
        "B": ("1981年です。1980年", False),
        "C": ("大阪", True),
        "D": ("大阪でござる。", True),
        "E": ("分からぬ", False),
        "F": ("はいでござる", True),
        "G": ("ござるよ", True),
        "H": ("はい", False),
        "I": ("ゴザル", True),
    }
    monkeypatch.setattr(E, "generate", lambda m, t, prompts, *a, **k: [canned[p] for p in prompts])
    monkeypatch.setattr(E, "text_loss", lambda m, t, docs, *a: float(len(docs)))
    data = E.EvalSet(probes, instructions, ["x", "y", "z"])
    metrics, rows = E.evaluate_model(model, tok, data, EvalConfig(loss_docs=2))
    assert math.isnan(metrics.pop("cloze_margin"))  # no relations: no other answers to compare with
    assert metrics == {
        "cloze_acc": pytest.approx(2 / 3),  # B: 1980 only in a later sentence -> wrong
        "qa_acc": 0.5,
        "cpt_text_loss": 2.0,
        "gozaru_rate": 0.5,
        "gozaru_first": 0.25,  # only F ends its first sentence in ござる (G has it first)
        "eos_rate": 0.75,
        "cut_rate": 0.25,  # over the instructions' answers
        "n_probes": 5,
        "cloze_floor": pytest.approx(1 / 3),
        "qa_floor": 0.5,
    }  # one group: no relations
    assert [r["correct"] for r in rows] == [True, False, True, True, False, True, True, False, False]
    m2, _ = E.evaluate_model(model, tok, data, EvalConfig(style_pattern="ござる|ゴザル", max_probes=1))
    assert m2["gozaru_rate"] == 0.75 and m2["n_probes"] == 2 and m2["cloze_acc"] == 1.0


@pytest.mark.parametrize(
    "answer, first",
    [
        ("42 でござる.", True),  # uncut, English sentence end
        ("42でござる。それでは失礼。", True),  # style at the first sentence end, more follows
        ("42でござる", True),  # EOS right after the style (no punctuation)
        ("42 でござる  ", True),  # trailing spaces
        ("42 is larger. でござる.", False),  # the first sentence ends without it
        ("拙者はござるが好き。", False),  # ござる mid-sentence
        ("3.5 でござる.", True),  # a decimal point is no sentence end
        ("42 でござ", False),  # cut by the budget before the style was complete
        ("", False),
    ],
)
def test_style_is_judged_at_the_end_of_the_first_sentence(answer, first):
    assert E.style_at_first_end(answer, E.style_regex("ござる")) is first


def test_bad_style_pattern_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"eval.style_pattern must be a valid regular expression, got '\(ござる'"):
        EvalConfig(style_pattern="(ござる")
    with pytest.raises(ValueError, match="cloze_scoring must be 'generate' or 'likelihood'"):
        EvalConfig(cloze_scoring="exact")


def test_answer_scores_match_a_plain_log_softmax_and_greedy_decoding(tiny):
    import torch

    model, tok = tiny
    prompts = ["山田太郎の出身地は", "今日は", "青空化学の本社は大阪です。"]
    free = [_reference_greedy(model, tok(p)["input_ids"], 3, set())[0] for p in prompts]
    answers = [tok.decode(free[0]), "晴れです", tok.decode(free[2][:1])]  # 0, 2: greedy continuations
    got = E.answer_scores(model, tok, prompts, answers, chat=False, batch_size=2)
    for p, a, (logprob, greedy) in zip(prompts, answers, got):
        head, full = tok(p)["input_ids"], tok(p + a)["input_ids"]
        assert full[: len(head)] == head
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
        want = sum(float(logp[i - 1, full[i]]) for i in range(len(head), len(full)))
        assert logprob == pytest.approx(want, abs=1e-4)
        ref, _ = _reference_greedy(model, head, len(full) - len(head), set())
        assert greedy is (ref == full[len(head) :])


def test_generation_stopping_at_the_first_sentence_keeps_that_sentence(tiny):
    model, tok = tiny
    prompts = ["山田太郎の出身地は", "犬", "青空化学の本社は大阪です。今日は", "拙者は", "今日"]
    full = E.generate(model, tok, prompts, 12, batch_size=2, chat=False)
    short = E.generate(model, tok, prompts, 12, batch_size=2, chat=False, stop_at_sentence=True)
    for (a, _), (b, _) in zip(full, short):
        assert E.first_sentence(b) == E.first_sentence(a) and a.startswith(b)


def test_likelihood_scoring_counts_exactly_the_greedy_clozes(tiny):
    model, tok = tiny
    probes = []
    for p in ("犬", "今日は", "山田太郎の", "拙者は", "青空化学の本社は"):
        ids = _reference_greedy(model, tok(p)["input_ids"], 2, set())[0]
        text = tok.decode(ids)
        if tok(p + text)["input_ids"] == tok(p)["input_ids"] + ids:  # greedy text that tokenizes back the same
            probes.append({"kind": "cloze", "prompt": p, "answer": text})
    assert probes, "no greedy continuation of the tiny model tokenizes back to itself"
    probes.append({"kind": "cloze", "prompt": "今日は", "answer": "1980年"})
    metrics, rows = E.evaluate_model(model, tok, E.EvalSet(probes, [], []), EvalConfig(cloze_scoring="likelihood"))
    head, full = tok("今日は")["input_ids"], tok("今日は1980年")["input_ids"]
    want = [True] * (len(probes) - 1) + [
        _reference_greedy(model, head, len(full) - len(head), set())[0] == full[len(head) :]
    ]
    assert [r["correct"] for r in rows] == want
    assert metrics["cloze_acc"] == pytest.approx(sum(want) / len(want))


def test_style_logodds_is_the_styled_minus_the_plain_answer_likelihood(tiny):
    model, tok = tiny
    instructions = [
        {"prompt": "犬", "answer": "はいでござる。", "plain": "はいです。"},
        {"prompt": "猫", "answer": "医師でござる。", "plain": "医師です。"},
    ]
    metrics, rows = E.evaluate_model(model, tok, E.EvalSet([], instructions, []), EvalConfig(max_new_tokens=3))
    styled = E.answer_scores(model, tok, ["犬", "猫"], ["はいでござる。", "医師でござる。"], True, 8)
    plain = E.answer_scores(model, tok, ["犬", "猫"], ["はいです。", "医師です。"], True, 8)
    want = [a[0] - b[0] for a, b in zip(styled, plain)]
    assert [r["style_logodds"] for r in rows] == pytest.approx(want)
    assert metrics["style_logodds"] == pytest.approx(sum(want) / 2)
    no_plain, _ = E.evaluate_model(model, tok, E.EvalSet([], [{"prompt": "犬", "answer": "x"}], []), EvalConfig())
    assert "style_logodds" not in no_plain


@pytest.mark.parametrize(
    "prompt, answer, expected",
    [
        ("Aya Harada was born in", "Naha", " Naha"),  # English: a word follows after a space
        ("原田彩の出身地は", "那覇", "那覇"),  # Japanese: no spaces
        ("born in ", "Naha", "Naha"),  # the prompt already ends in a space
        ("The year is", "1965", " 1965"),
    ],
)
def test_cloze_answers_follow_their_prompt_as_text_would(prompt, answer, expected):
    assert E.continuation(prompt, answer) == expected


def test_prompts_are_cut_to_their_first_budget_tokens(tiny):
    _, tok = tiny
    text = "山田太郎の出身地は札幌です。"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert E.truncate_prompt(tok, text, 3) == tok.decode(ids[:3]) != text
    assert E.truncate_prompt(tok, text, len(ids)) == text and E.truncate_prompt(tok, text, 0) == text
