"""Probes that measure knowledge, not a memorised sentence: held-out clozes, the guessing floor and the margin."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from conftest import tiny_model_and_tokenizer

from layerprobe.core.config_data import EvalConfig, ToyWorldConfig
from layerprobe.evaluation import evaluate as E
from layerprobe.sources.toyworld import english as EN
from layerprobe.sources.toyworld import toy_data
from layerprobe.sources.toyworld import world as W

SMALL = ToyWorldConfig(
    base_people=12,
    base_orgs=3,
    base_docs_per_entity=5,
    everyday_docs=20,
    cpt_people=6,
    cpt_orgs=2,
    cpt_docs_per_entity=5,
    sft_examples=40,
    heldout_instructions=10,
)


# -- the held-out cloze form ---------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _windows(items, n: int) -> set[tuple]:
    return {tuple(items[i : i + n]) for i in range(len(items) - n + 1)}


@pytest.mark.parametrize("world", ["small", "default"])
@pytest.mark.parametrize("language", ["ja", "en"])
def test_heldout_clozes_never_occur_in_the_cpt_text(world, language):
    """No held-out prompt, no prompt + answer and no long span of a held-out form is in any CPT document.

    A span is 5 words in English (the entity's name and the answer included) and 8 characters in Japanese (of the
    template's own text, and of prompt + answer)."""
    cfg = dataclasses.replace(SMALL if world == "small" else ToyWorldConfig(), language=language)
    data = toy_data(cfg)
    text = "\n".join(data.cpt_docs)
    templates = W.heldout_templates(language)
    cpt_templates = W.TEMPLATES if language == "ja" else EN.TEMPLATES
    assert set(templates) == set(cpt_templates)
    assert not [r for r, t in templates.items() if t in cpt_templates[r]]
    cloze = [p for p in data.probes if p["kind"] == "cloze"]
    heldout = [p for p in data.probes if p["kind"] == "cloze_heldout"]
    assert [(p["entity"], p["relation"], p["answer"]) for p in heldout] == [
        (p["entity"], p["relation"], p["answer"]) for p in cloze
    ]  # every CPT fact, once
    for p in heldout:
        full = p["prompt"] + E.continuation(p["prompt"], p["answer"])
        assert templates[p["relation"]].format(name=p["entity"], v=p["answer"]).startswith(full)
        assert p["prompt"] not in text and full not in text, p
    pieces = [piece for t in templates.values() for piece in re.split(r"\{name\}|\{v\}", t)]
    if language == "en":
        grams = set().union(*(_windows(_words(d), 5) for d in data.cpt_docs))
        for piece in pieces:
            assert not _windows(_words(piece), 5) & grams, piece
        for p in heldout:
            assert not _windows(_words(f"{p['prompt']} {p['answer']}"), 5) & grams, p
    else:
        spans = [piece[i : i + 8] for piece in pieces for i in range(len(piece) - 7)]
        spans += [
            full[i : i + 8] for full in (p["prompt"] + p["answer"] for p in heldout) for i in range(len(full) - 7)
        ]
        assert spans and not [s for s in spans if s in text]


def test_cloze_probes_are_unchanged_by_the_heldout_form():
    """The clozes and questions are what they were: held-out clozes only add probes, so old numbers still hold."""
    data = toy_data(SMALL)
    world = W.make_world(SMALL.seed, SMALL.base_people, SMALL.base_orgs, SMALL.cpt_people, SMALL.cpt_orgs)
    old = []
    for e in world.cpt:
        for rel, value in e.facts.items():
            old.append(
                {
                    "kind": "cloze",
                    "prompt": W.TEMPLATES[rel][0].format(name=e.name, v="\0").split("\0")[0],
                    "answer": value,
                    "entity": e.name,
                    "relation": rel,
                }
            )
            old.append(
                {
                    "kind": "qa",
                    "prompt": W.QUESTIONS[rel][0].format(name=e.name),
                    "answer": value,
                    "entity": e.name,
                    "relation": rel,
                }
            )
    assert [p for p in data.probes if p["kind"] != "cloze_heldout"] == old


# -- the guessing floor --------------------------------------------------------------------------------------------


def _reference_floor(probes: list[dict]) -> float:
    hits = 0
    for rel in {p.get("relation") for p in probes}:
        answers = [E.normalize(p["answer"]) for p in probes if p.get("relation") == rel]
        hits += max(answers.count(a) for a in answers)
    return hits / len(probes)


FLOOR_PROBES = [
    {"kind": "qa", "prompt": "q1", "answer": "札幌", "relation": "birthplace"},
    {"kind": "qa", "prompt": "q2", "answer": "札幌", "relation": "birthplace"},
    {"kind": "qa", "prompt": "q3", "answer": "大阪", "relation": "birthplace"},
    {"kind": "qa", "prompt": "q4", "answer": "1980", "relation": "birth_year"},
    {"kind": "qa", "prompt": "q5", "answer": "１９８０", "relation": "birth_year"},  # the same answer, normalised
    {"kind": "qa", "prompt": "q6", "answer": "1990", "relation": "birth_year"},
    {"kind": "qa", "prompt": "q7", "answer": "医師", "relation": "job"},
]


def test_guessing_floor_is_the_majority_answer_share_per_relation():
    assert E.guessing_floor(FLOOR_PROBES) == pytest.approx(_reference_floor(FLOOR_PROBES)) == pytest.approx(5 / 7)
    no_relation = [{k: v for k, v in p.items() if k != "relation"} for p in FLOOR_PROBES]
    assert E.guessing_floor(no_relation) == pytest.approx(_reference_floor(no_relation)) == pytest.approx(2 / 7)
    assert math.isnan(E.guessing_floor([]))


def test_toy_world_floors_match_the_reference():
    probes = toy_data(SMALL).probes
    for kind in ("cloze", "cloze_heldout", "qa"):
        rows = [p for p in probes if p["kind"] == kind]
        assert E.guessing_floor(rows) == pytest.approx(_reference_floor(rows), abs=1e-12)
    assert E.guessing_floor([p for p in probes if p["kind"] == "cloze"]) == E.guessing_floor(
        [p for p in probes if p["kind"] == "cloze_heldout"]
    )  # the same facts: one cloze_floor


# -- the log-probability margin, on a tiny model -------------------------------------------------------------------

TEXTS = [
    "山田太郎の出身地は札幌です。山田太郎は1980年に生まれました。",
    "今日は晴れです。犬が公園にいます。",
    "青空化学の本社は大阪です。",
    "拙者は医師でござる。",
    "Taro Yamada was born in Sapporo.",
] * 3


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_tokenizer(TEXTS)


def _reference_logprob(model, tok, prompt: str, answer: str) -> float:
    """Sum of log p(answer tokens | prompt): one unpadded sequence, one forward pass, a plain loop."""
    import torch

    head = tok(prompt)["input_ids"]
    full = tok(prompt + E.continuation(prompt, answer))["input_ids"]
    n = 0
    while n < min(len(head), len(full)) and head[n] == full[n]:
        n += 1
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].float(), -1)
    return sum(float(logp[i - 1, full[i]]) for i in range(n, len(full)))


def _reference_margins(model, tok, probes: list[dict]) -> list[float]:
    out = []
    for p in probes:
        others = {
            E.normalize(q["answer"]): q["answer"]
            for q in reversed(probes)
            if q.get("relation") is not None and q.get("relation") == p.get("relation")
        }
        others.pop(E.normalize(p["answer"]), None)
        if not others:
            out.append(math.nan)
            continue
        gold = _reference_logprob(model, tok, p["prompt"], p["answer"])
        out.append(gold - max(_reference_logprob(model, tok, p["prompt"], a) for a in others.values()))
    return out


CLOZE = [
    {"prompt": "山田太郎の出身地は", "answer": "札幌", "relation": "birthplace"},
    {"prompt": "青空花子の出身地は", "answer": "大阪", "relation": "birthplace"},
    {"prompt": "佐藤健の出身地は", "answer": "鹿児島", "relation": "birthplace"},  # answers of 1-3 tokens
    {"prompt": "鈴木愛の出身地は", "answer": "札幌", "relation": "birthplace"},
    {"prompt": "山田太郎の生年は", "answer": "1980", "relation": "birth_year"},
    {"prompt": "青空花子の生年は", "answer": "1975", "relation": "birth_year"},
    {"prompt": "青空化学の本社は", "answer": "大阪", "relation": "hq"},  # its relation's only answer: NaN
    {"prompt": "Taro Yamada was born in", "answer": "Sapporo", "relation": "en_birthplace"},
    {"prompt": "Hanako Aozora was born in", "answer": "Osaka", "relation": "en_birthplace"},
]
HELDOUT = [
    {"prompt": "山田太郎が生まれ育った町は", "answer": "札幌", "relation": "birthplace"},
    {"prompt": "青空花子が生まれ育った町は", "answer": "大阪", "relation": "birthplace"},
    {"prompt": "山田太郎が誕生したのは", "answer": "1980", "relation": "birth_year"},
    {"prompt": "鈴木愛が誕生したのは", "answer": "1980", "relation": "birth_year"},  # no other answer: NaN
]


def _probes(kind: str, rows: list[dict]) -> list[dict]:
    return [{"kind": kind, **r} for r in rows]


@pytest.mark.parametrize("scoring", ["likelihood", "generate"])
def test_margins_match_a_plain_per_sequence_reference(tiny, scoring):
    model, tok = tiny
    probes = _probes("cloze", CLOZE) + _probes("qa", CLOZE[:2]) + _probes("cloze_heldout", HELDOUT)
    cfg = EvalConfig(cloze_scoring=scoring, batch_size=3, max_new_tokens=4)
    metrics, rows = E.evaluate_model(model, tok, E.EvalSet(probes, [], []), cfg)
    for kind, given in (("cloze", CLOZE), ("cloze_heldout", HELDOUT)):
        got = [r for r in rows if r["kind"] == kind]
        want = _reference_margins(model, tok, given)
        assert [r["prompt"] for r in got] == [p["prompt"] for p in given]
        for r, w in zip(got, want):
            assert (math.isnan(r["margin"]) and math.isnan(w)) or r["margin"] == pytest.approx(w, abs=1e-5), r
            assert r["logprob"] == pytest.approx(_reference_logprob(model, tok, r["prompt"], r["answer"]), abs=1e-5)
        finite = [w for w in want if not math.isnan(w)]
        assert metrics[f"{kind}_margin"] == pytest.approx(sum(finite) / len(finite), abs=1e-5)
        assert metrics[f"{kind}_acc"] == pytest.approx(sum(r["correct"] for r in got) / len(got))
    assert math.isnan([r for r in rows if r["kind"] == "cloze"][6]["margin"])  # hq: one answer only
    assert sum(math.isnan(r["margin"]) for r in rows if r["kind"] == "cloze_heldout") == 2
    assert metrics["cloze_floor"] == pytest.approx(_reference_floor(_probes("cloze", CLOZE)))
    assert metrics["qa_floor"] == 1 / 2 and metrics["n_probes"] == len(CLOZE) + 2  # the held-out ones not counted
    assert [r for r in rows if r["kind"] == "qa"] and not any("margin" in r for r in rows if r["kind"] == "qa")


@pytest.mark.parametrize("scoring", ["likelihood", "generate"])
def test_heldout_clozes_are_scored_exactly_like_clozes_and_leave_them_unchanged(tiny, scoring):
    model, tok = tiny
    cloze = _probes("cloze", CLOZE)
    cfg = EvalConfig(cloze_scoring=scoring, batch_size=4, max_new_tokens=4)
    alone, alone_rows = E.evaluate_model(model, tok, E.EvalSet(cloze, [], []), cfg)
    both, both_rows = E.evaluate_model(model, tok, E.EvalSet(cloze + _probes("cloze_heldout", CLOZE), [], []), cfg)
    assert "cloze_heldout_acc" not in alone and "cloze_heldout_margin" not in alone
    assert [r for r in both_rows if r["kind"] == "cloze"] == alone_rows  # bit for bit
    twins = [{**r, "kind": "cloze"} for r in both_rows if r["kind"] == "cloze_heldout"]
    assert len(twins) == len(alone_rows)
    for a, b in zip(twins, alone_rows):  # the same prompts scored as held-out clozes: the same answers
        assert {k: v for k, v in a.items() if k not in ("logprob", "margin")} == {
            k: v for k, v in b.items() if k not in ("logprob", "margin")
        }
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-5)
        assert (math.isnan(a["margin"]) and math.isnan(b["margin"])) or a["margin"] == pytest.approx(
            b["margin"], abs=1e-5
        )
    assert both["cloze_heldout_acc"] == both["cloze_acc"] == alone["cloze_acc"]
    assert both["cloze_heldout_margin"] == pytest.approx(both["cloze_margin"], abs=1e-5)
    assert both["cloze_margin"] == alone["cloze_margin"]


def test_max_probes_caps_the_heldout_clozes_like_the_others():
    probes = _probes("cloze", CLOZE) + _probes("qa", CLOZE) + _probes("cloze_heldout", HELDOUT)
    limited = E.EvalSet(probes, [], []).limited(EvalConfig(max_probes=2))
    assert [p["kind"] for p in limited.probes] == ["cloze"] * 2 + ["cloze_heldout"] * 2 + ["qa"] * 2
    assert E.EvalSet(probes[: len(CLOZE) * 2], [], []).limited(EvalConfig()).probes == probes[: len(CLOZE) * 2]


def test_new_metrics_are_listed():
    assert {"cloze_margin", "cloze_floor", "qa_floor"} <= set(E.METRICS)
    assert {"cloze_heldout_acc", "cloze_heldout_margin"} <= set(E.OPTIONAL_METRICS)
