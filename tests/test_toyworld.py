"""The toy world: generated facts and text, the byte-level BPE tokenizer and the cached base model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import threading

import pytest

from layerprobe.core.config_data import ToyWorldConfig
from layerprobe.sources.toyworld import toy_data
from layerprobe.sources.toyworld import world as W

SMALL = dict(
    base_people=12,
    base_orgs=3,
    base_docs_per_entity=5,
    everyday_docs=20,
    cpt_people=6,
    cpt_orgs=2,
    cpt_docs_per_entity=5,
    sft_examples=40,
    heldout_instructions=10,
    vocab_size=400,
    hidden_size=32,
    num_layers=1,
    base_steps=3,
    base_batch_size=4,
    block_size=32,
)


@pytest.fixture(scope="module")
def small():
    return ToyWorldConfig(**SMALL)


@pytest.fixture(scope="module")
def world(small):
    from layerprobe.sources.toyworld import make_world

    return make_world(small)


def test_world_is_deterministic_and_base_and_cpt_entities_are_disjoint(world, small):
    from layerprobe.sources.toyworld import make_world

    again = make_world(small)
    assert [(e.name, e.facts) for e in again.base + again.cpt] == [(e.name, e.facts) for e in world.base + world.cpt]
    names = [e.name for e in world.base + world.cpt]
    assert len(names) == len(set(names))
    founders = {e.facts["founder"] for e in world.base + world.cpt if e.kind == "org"}
    assert not founders & set(names)
    assert len([e for e in world.cpt if e.kind == "person"]) == small.cpt_people
    assert len([e for e in world.cpt if e.kind == "org"]) == small.cpt_orgs
    cpt_orgs = {e.name for e in world.cpt if e.kind == "org"}
    assert all(e.facts["employer"] in cpt_orgs for e in world.cpt if e.kind == "person")


def test_cpt_text_states_every_fact_in_every_form_with_the_full_name(world, small):
    docs = W.cpt_corpus(world, small.cpt_docs_per_entity, small.seed)
    assert len(docs) == len(world.cpt) * small.cpt_docs_per_entity
    sentences = [s + "。" for d in docs for s in d.split("。") if s]
    for e in world.cpt:
        own = [s for s in sentences if s.startswith(e.name)]
        assert len(own) == small.cpt_docs_per_entity * len(e.facts)
        for rel in e.facts:
            for form in W.N_FORMS:  # 5 documents, 5 forms: each form exactly once
                assert own.count(W.fact_sentence(e, rel, form)) == 1
    # every sentence is a fact sentence of a CPT entity: nothing about base entities leaks in
    known = {W.fact_sentence(e, rel, f) for e in world.cpt for rel in e.facts for f in W.N_FORMS}
    assert set(sentences) <= known


def test_base_corpus_and_sft_data_never_mention_cpt_entities(world, small):
    base = W.base_corpus(world, small.base_docs_per_entity, small.everyday_docs, small.seed)
    data = toy_data(small)
    cpt_names = [e.name for e in world.cpt]
    texts = (
        base
        + [m["content"] for r in data.sft_rows for m in r["prompt"] + r["completion"]]
        + [r["prompt"] + r["answer"] for r in data.instructions]
    )
    for name in cpt_names:
        assert not any(name in t for t in texts), name


def test_sft_answers_end_in_gozaru_and_heldout_instructions_are_new(small):
    data = toy_data(small)
    assert len(data.sft_rows) == small.sft_examples
    assert len(data.instructions) == small.heldout_instructions
    assert all(r["completion"][0]["content"].endswith("でござる。") for r in data.sft_rows)
    train_prompts = {r["prompt"][0]["content"] for r in data.sft_rows}
    assert not train_prompts & {r["prompt"] for r in data.instructions}


def test_probes_cover_every_cpt_fact_once_per_kind(world):
    probes = W.probes(world)
    facts = [(e.name, rel, v) for e in world.cpt for rel, v in e.facts.items()]
    for kind in ("cloze", "cloze_heldout", "qa"):
        got = [(p["entity"], p["relation"], p["answer"]) for p in probes if p["kind"] == kind]
        assert got == facts
    for p in probes:
        if p["kind"] == "cloze":  # the prompt is the first form cut right before the answer
            e = next(e for e in world.cpt if e.name == p["entity"])
            assert W.fact_sentence(e, p["relation"], 0).startswith(p["prompt"] + p["answer"])
        elif p["kind"] == "cloze_heldout":  # the held-out form cut the same way
            sentence = W.HELDOUT[p["relation"]].format(name=p["entity"], v=p["answer"])
            assert sentence.startswith(p["prompt"] + p["answer"]) and p["prompt"].startswith(p["entity"])
        else:
            assert p["prompt"].startswith(p["entity"]) and p["prompt"].endswith(("？", "。"))


def test_instructions_refuse_too_few_base_questions():
    world = W.make_world(0, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="too few"):
        W.instructions(world, n_train=10, n_heldout=100, seed=0)


# -- tokenizer ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(world, small):
    from layerprobe.sources.toyworld.tokenizer import build_tokenizer

    return build_tokenizer(W.base_corpus(world, 5, 20, 0), 400)


def test_tokenizer_round_trips_any_text_and_starts_with_bos(tok):
    for text in ("斎藤凛の出身地は札幌です。", "未知の漢字：鬱 and ASCII 123 🙂", ""):
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok) == 400


def test_cloze_prompt_tokens_are_a_prefix_of_the_sentence_tokens(world, tok):
    """Merges never cross a change of script, so cutting before the answer cuts on a token boundary."""
    for p in W.probes(world):
        if p["kind"] not in ("cloze", "cloze_heldout"):
            continue
        full = tok(p["prompt"] + p["answer"])["input_ids"]
        prompt = tok(p["prompt"])["input_ids"]
        assert full[: len(prompt)] == prompt


def test_chat_template_marks_the_answer_and_eos_as_assistant_tokens(tok):
    msgs = [
        {"role": "user", "content": "犬について一言お願いします。"},
        {"role": "assistant", "content": "犬はかわいいでござる。"},
    ]
    out = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True)
    prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
    answer = tok("犬はかわいいでござる。", add_special_tokens=False)["input_ids"]
    assert ids == prompt + answer + [tok.eos_token_id]
    assert mask == [0] * len(prompt) + [1] * (len(answer) + 1)


# -- the cached base model ------------------------------------------------------------------------------------


def test_base_is_built_once_cached_by_its_config_and_loadable(tmp_path, monkeypatch, small):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from layerprobe.sources.toyworld import base as B

    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path))
    calls = []
    real_build = B._build
    monkeypatch.setattr(B, "_build", lambda *a, **k: (calls.append(1), real_build(*a, **k))[1])
    results = []
    threads = [threading.Thread(target=lambda: results.append(B.ensure_base(small))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1]  # the lock made the second caller wait and reuse
    folder = results[0]
    assert folder.parent == tmp_path / "toyworld"
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left
    mtime = (folder / "build.json").stat().st_mtime
    assert B.ensure_base(small) == folder and (folder / "build.json").stat().st_mtime == mtime and len(calls) == 1

    # the CPT part of the world does not change the base; its pretraining does
    from dataclasses import replace

    assert B.base_dir(replace(small, cpt_people=9, cpt_docs_per_entity=7)) == folder
    assert B.base_dir(replace(small, base_steps=4)) != folder

    info = json.loads((folder / "build.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    h, v, L = small.hidden_size, small.vocab_size, small.num_layers
    per_layer = 4 * h * h + 3 * h * (3 * h) + 2 * h  # attention, MLP, two norms
    assert info["params"] == sum(p.numel() for p in model.parameters()) == 2 * v * h + L * per_layer + h
    assert model.config.model_type == "llama" and not model.config.tie_word_embeddings
    assert len(tok) == v and tok.chat_template and len(info["loss_curve"]) == small.base_steps


def test_base_pretraining_lowers_the_loss_on_its_corpus(tmp_path, monkeypatch):
    """Forty steps must already beat the untrained model clearly on its own text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from layerprobe.sources.toyworld import base as B

    monkeypatch.setenv("LAYERPROBE_CACHE", str(tmp_path))
    cfg = ToyWorldConfig(**{**SMALL, "base_steps": 40, "base_lr": 1e-2, "base_batch_size": 8})
    folder = B.ensure_base(cfg)
    tok = AutoTokenizer.from_pretrained(folder)
    trained = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(cfg.seed)
    untrained = LlamaForCausalLM(trained.config)
    docs = random.Random(1).sample(B.base_texts(cfg), 16)
    enc = tok(docs, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        after = trained(**enc, labels=labels).loss.item()
        before = untrained(**enc, labels=labels).loss.item()
    assert before > 5.5 and after < before - 1.5, (before, after)
    assert os.path.isdir(folder)


# -- the same world in English (for real models) -----------------------------------------------------------------


def test_every_pool_entry_has_one_distinct_english_form():
    from layerprobe.sources.toyworld import english as EN

    for pool in (W.CITIES, W.JOBS, W.HOBBIES, W.PRODUCTS, W.FOODS, W.ANIMALS, W.PLACES, W.WEATHER):
        forms = [EN.name(x) for x in pool]
        assert len(set(forms)) == len(pool) and all(f.isascii() for f in forms)
    people = {EN.name(f + g) for f in W.FAMILY for g in W.GIVEN}
    assert len(people) == len(W.FAMILY) * len(W.GIVEN)  # no two people share an English name
    with pytest.raises(KeyError, match="no English form"):
        EN.name("未知")


@pytest.fixture(scope="module")
def english(small):
    from layerprobe.sources.toyworld import toy_data

    return toy_data(dataclasses.replace(small, language="en"))


@pytest.mark.parametrize("language", ["ja", "en"])
def test_questions_never_occur_in_the_cpt_text(small, language):
    """QA asks in phrasings the CPT text never uses (with or without the question mark)."""
    data = toy_data(dataclasses.replace(small, language=language))
    text = "\n".join(data.cpt_docs)
    qa = [p["prompt"] for p in data.probes if p["kind"] == "qa"]
    assert len(qa) == len([p for p in data.probes if p["kind"] == "cloze"]) * (1 if language == "ja" else 2)
    assert not [q for q in qa if q.rstrip("?？") in text]


def test_english_probes_cover_every_fact_with_a_cloze_and_two_questions(english, world):
    from layerprobe.sources.toyworld import english as EN

    facts = [(EN.name(e.name), rel, EN.name(v)) for e in world.cpt for rel, v in e.facts.items()]
    cloze = [(p["entity"], p["relation"], p["answer"]) for p in english.probes if p["kind"] == "cloze"]
    qa = [(p["entity"], p["relation"], p["answer"]) for p in english.probes if p["kind"] == "qa"]
    assert cloze == facts and qa == [f for f in facts for _ in range(2)]
    sentences = {s.strip() + "." for d in english.cpt_docs for s in d.split(".") if s.strip()}
    for p in english.probes:
        if p["kind"] == "cloze":  # the first form, cut right before the answer, is a CPT sentence
            assert any(s.startswith(f"{p['prompt']} {p['answer']}") for s in sentences), p


def test_english_sft_is_chores_in_gozaru_style_with_plain_twins(english, small):
    assert len(english.sft_rows) == small.sft_examples
    assert all(r["completion"][0]["content"].endswith(" でござる.") for r in english.sft_rows)
    assert all(r["prompt"][0]["content"].isascii() for r in english.sft_rows)
    for r in english.instructions:
        assert r["answer"].endswith(" でござる.") and r["plain"] == r["answer"][: -len(" でござる.")] + "."
    assert not {r["prompt"][0]["content"] for r in english.sft_rows} & {r["prompt"] for r in english.instructions}


def test_japanese_instructions_have_plain_twins(world):
    _, heldout = W.instructions(world, n_train=20, n_heldout=10, seed=0)
    for r in heldout:
        assert r["answer"].endswith("でござる。") and r["plain"] == r["answer"][: -len("でござる。")] + "です。"


def test_the_base_has_the_same_bits_whatever_threads_the_caller_uses(tmp_path, small):
    """Two threads sum floats in another order than one: the build pins its own count (and puts the caller's back)."""
    import torch

    from layerprobe.sources.toyworld import base as B

    # big enough that torch splits its sums over two threads (the SMALL world's model is not)
    cfg = dataclasses.replace(small, hidden_size=128, num_layers=2, block_size=128, base_batch_size=16, vocab_size=2000)
    before = torch.get_num_threads()
    digests = []
    for n, threads in enumerate((2, 1)):
        torch.set_num_threads(threads)
        try:
            B._build(cfg, tmp_path / str(n), progress=False)
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(before)
        digests.append(hashlib.sha256((tmp_path / str(n) / "model.safetensors").read_bytes()).hexdigest())
        assert json.loads((tmp_path / str(n) / "build.json").read_text())["threads"] == B.BUILD_THREADS
    assert digests[0] == digests[1]
