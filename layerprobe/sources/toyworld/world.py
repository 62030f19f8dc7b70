"""The toy world: fictional people and organisations, written about in short Japanese sentences.

Two disjoint sets of entities are drawn from the same name and attribute pools:

* the *base* entities, which the toy base model reads during its pretraining (together with everyday
  sentences), and which the SFT questions are about: a base model knows them, as a real one knows
  public facts;
* the *CPT* entities, which only the CPT text mentions: facts no model knows before CPT.

Following Physics of Language Models 3.1, every CPT entity is described by several biographies, each a
shuffled set of sentences in several paraphrase forms, with the full name in every sentence. Probes:
a *cloze* is the first form (``<name>の<relation>は``) cut before the answer; a *held-out cloze* is a form
the CPT text never uses (:data:`HELDOUT`), cut the same way; a *question* asks for the fact in a form the
CPT text never uses, as the SFT questions about base entities do. The pools and forms are Japanese
(:mod:`layerprobe.sources.toyworld.japanese`); :mod:`layerprobe.sources.toyworld.english` renders the same world in
English.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from layerprobe.sources.toyworld import english as EN
from layerprobe.sources.toyworld import japanese as JA
from layerprobe.sources.toyworld.japanese import (
    ANIMALS,
    CITIES,
    EVERYDAY,
    FAMILY,
    FOODS,
    GIVEN,
    GOZARU,
    HELDOUT,
    HOBBIES,
    JOBS,
    ORG_HEADS,
    ORG_KINDS,
    PLACES,
    PRODUCTS,
    QUESTIONS,
    TEMPLATES,
    WEATHER,
)

LANGUAGES = ("ja", "en")

PERSON_RELATIONS = ("birthplace", "birth_year", "employer", "job", "hobby")
ORG_RELATIONS = ("hq", "founded", "founder", "product")

N_FORMS = tuple(range(5))


@dataclass(frozen=True)
class Entity:
    """A fictional person or organisation and its facts (relation -> answer string)."""

    name: str
    kind: str  # "person" | "org"
    facts: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class World:
    base: tuple[Entity, ...]
    cpt: tuple[Entity, ...]


def _names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = rng.choice(FAMILY) + rng.choice(GIVEN)
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _orgs(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    if n > len(ORG_HEADS) * len(ORG_KINDS) - len(taken):
        raise ValueError(f"at most {len(ORG_HEADS) * len(ORG_KINDS)} organisations can be drawn, asked for {n}")
    out: list[str] = []
    while len(out) < n:
        name = rng.choice(ORG_HEADS) + rng.choice(ORG_KINDS)
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _entities(rng: random.Random, n_people: int, n_orgs: int, taken: set[str]) -> tuple[Entity, ...]:
    orgs = []
    for name in _orgs(rng, n_orgs, taken):
        founder = _names(rng, 1, taken)[0]
        orgs.append(
            Entity(
                name,
                "org",
                {
                    "hq": rng.choice(CITIES),
                    "founded": str(rng.randint(1900, 1999)),
                    "founder": founder,
                    "product": rng.choice(PRODUCTS),
                },
            )
        )
    people = [
        Entity(
            name,
            "person",
            {
                "birthplace": rng.choice(CITIES),
                "birth_year": str(rng.randint(1950, 1999)),
                "employer": rng.choice(orgs).name,
                "job": rng.choice(JOBS),
                "hobby": rng.choice(HOBBIES),
            },
        )
        for name in _names(rng, n_people, taken)
    ]
    return tuple(people + orgs)


def make_world(seed: int, base_people: int, base_orgs: int, cpt_people: int, cpt_orgs: int) -> World:
    """Draw the base entities, then the CPT entities (disjoint names) with the same generator."""
    if min(base_people, base_orgs, cpt_people, cpt_orgs) < 1:
        raise ValueError(
            "the toy world needs at least one base and one CPT person and organisation, got "
            f"base_people={base_people}, base_orgs={base_orgs}, cpt_people={cpt_people}, "
            f"cpt_orgs={cpt_orgs}"
        )
    taken: set[str] = set()
    base = _entities(random.Random(f"base-{seed}"), base_people, base_orgs, taken)
    cpt = _entities(random.Random(f"cpt-{seed}"), cpt_people, cpt_orgs, taken)
    return World(base=base, cpt=cpt)


def _lang(lang: str):
    """(templates, questions, render a name or value, sentence separator) of a language."""
    if lang == "ja":
        return TEMPLATES, QUESTIONS, (lambda x: x), ""
    if lang == "en":
        return EN.TEMPLATES, EN.QUESTIONS, EN.name, " "
    raise ValueError(f"toy world language must be one of {', '.join(LANGUAGES)}, got {lang!r}")


def heldout_templates(lang: str = "ja") -> dict[str, str]:
    """relation -> the held-out cloze form of a language (:data:`HELDOUT`, :data:`english.HELDOUT`)."""
    _lang(lang)
    return HELDOUT if lang == "ja" else EN.HELDOUT


def cloze_prompt(template: str, name: str) -> str:
    """A fact template filled with ``name`` and cut right before the answer (trailing spaces dropped)."""
    return template.format(name=name, v="\0").split("\0")[0].rstrip()


def fact_sentence(entity: Entity, relation: str, template: int, lang: str = "ja") -> str:
    templates, _, render, _ = _lang(lang)
    return templates[relation][template].format(name=render(entity.name), v=render(entity.facts[relation]))


def biographies(entity: Entity, rng: random.Random, n: int, templates: tuple[int, ...], lang: str = "ja") -> list[str]:
    """``n`` documents, each stating every fact of the entity once in shuffled order.

    Each fact cycles through its paraphrase templates across the documents (in a shuffled order), so with
    ``n >= len(templates)`` every fact appears in every form.
    """
    forms = {}
    for rel in entity.facts:
        order = list(templates)
        rng.shuffle(order)
        forms[rel] = [order[i % len(order)] for i in range(n)]
    docs = []
    for i in range(n):
        sentences = [fact_sentence(entity, rel, forms[rel][i], lang) for rel in entity.facts]
        rng.shuffle(sentences)
        docs.append(_lang(lang)[3].join(sentences))
    return docs


def cpt_corpus(world: World, docs_per_entity: int, seed: int, lang: str = "ja") -> list[str]:
    """The CPT text: ``docs_per_entity`` shuffled, paraphrased biographies of each CPT entity."""
    rng = random.Random(f"cpt-text-{seed}")
    docs = [d for e in world.cpt for d in biographies(e, rng, docs_per_entity, N_FORMS, lang)]
    rng.shuffle(docs)
    return docs


def _fill(template: str, rng: random.Random, render=lambda x: x) -> str:
    return template.format(
        weather=render(rng.choice(WEATHER)),
        animal=render(rng.choice(ANIMALS)),
        place=render(rng.choice(PLACES)),
        food=render(rng.choice(FOODS)),
        job=render(rng.choice(JOBS)),
    )


def base_corpus(world: World, docs_per_entity: int, everyday_docs: int, seed: int) -> list[str]:
    """The base model's pretraining text: biographies of base entities (all templates) and everyday text."""
    rng = random.Random(f"base-text-{seed}")
    docs = [d for e in world.base for d in biographies(e, rng, docs_per_entity, N_FORMS)]
    for _ in range(everyday_docs):
        pool = GOZARU if rng.random() < 0.15 else EVERYDAY
        docs.append("".join(_fill(rng.choice(pool), rng) for _ in range(rng.randint(2, 4))))
    rng.shuffle(docs)
    return docs


def general_heldout(n: int, seed: int, lang: str = "ja") -> list[str]:
    """Held-out general text: everyday documents of the base model's kind that it never read (its own stream)."""
    rng = random.Random(f"heldout-text-{seed}")
    pool, render, sep = (EVERYDAY, lambda x: x, "") if lang == "ja" else (EN.EVERYDAY, EN.name, " ")
    return [sep.join(_fill(rng.choice(pool), rng, render) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def probes(world: World, lang: str = "ja") -> list[dict]:
    """Probes on every CPT fact: a cloze, a held-out cloze and questions.

    The *cloze* is the first CPT form cut before the answer, so its prompt and answer are a CPT sentence; the
    *cloze_heldout* is the relation's :data:`HELDOUT` form cut the same way, words the CPT text never uses (scored
    like the cloze). Japanese asks the first question form (the toy SFT data trains both forms on base entities);
    English asks both forms, as its SFT data holds no questions about entities at all.
    """
    templates, questions, render, _ = _lang(lang)
    heldout = heldout_templates(lang)
    forms = 1 if lang == "ja" else 2
    out = []
    for e in world.cpt:
        name = render(e.name)
        for rel, value in e.facts.items():
            answer = render(value)
            out.append(
                {
                    "kind": "cloze",
                    "prompt": cloze_prompt(templates[rel][0], name),
                    "answer": answer,
                    "entity": name,
                    "relation": rel,
                }
            )
            out.append(
                {
                    "kind": "cloze_heldout",
                    "prompt": cloze_prompt(heldout[rel], name),
                    "answer": answer,
                    "entity": name,
                    "relation": rel,
                }
            )
            out += [
                {"kind": "qa", "prompt": q.format(name=name), "answer": answer, "entity": name, "relation": rel}
                for q in questions[rel][:forms]
            ]
    return out


MAX_CHORES = len(FOODS + ANIMALS + PLACES) + 98 + 99 * 98 + len(ANIMALS)  # distinct prompts _chores can draw


def _draw_chore(rng: random.Random) -> tuple[int, tuple]:
    """An instruction that needs no world knowledge: its kind and arguments, rendered by the language."""
    kind = rng.randrange(4)
    if kind == 0:
        return kind, (rng.choice(FOODS + ANIMALS + PLACES),)
    if kind == 1:
        return kind, (rng.randint(1, 98),)
    if kind == 2:
        return kind, tuple(rng.sample(range(1, 100), 2))
    return kind, (rng.choice(ANIMALS),)


def instructions(
    world: World, n_train: int, n_heldout: int, seed: int, lang: str = "ja"
) -> tuple[list[dict], list[dict]]:
    """SFT examples (prompt/completion) and held-out instructions (prompt, answer, plain), none about a CPT entity.

    Japanese: half are questions about base entities (facts the toy base model read), half chores that need no
    knowledge. English (for real models, which never read the base entities): chores only, so SFT teaches the
    style without new facts. No held-out prompt is a training prompt. ``plain`` is the answer without the style.
    """
    if n_train + n_heldout > MAX_CHORES:
        raise ValueError(
            f"the toy world has {MAX_CHORES} distinct chores, fewer than the {n_train + n_heldout} "
            "SFT and held-out instructions asked for; lower sft_examples or heldout_instructions"
        )
    _lang(lang)
    rng = random.Random(f"sft-{seed}")
    questions = [
        (q.format(name=e.name), f"{v}でござる。")
        for e in world.base
        for rel, v in e.facts.items()
        for q in QUESTIONS[rel]
    ]
    rng.shuffle(questions)
    seen: set[tuple] = set()
    chores: list[tuple[str, str, str | None]] = []
    while len(chores) < n_train + n_heldout:
        kind, args = _draw_chore(rng)
        if (kind, args) not in seen:
            seen.add((kind, args))
            chores.append(JA.chore(kind, args) + (None,) if lang == "ja" else EN.chore(kind, args))
    if lang == "ja":
        n_q = min(len(questions) - n_heldout // 2, n_train // 2)
        if n_q < 1:
            raise ValueError(
                f"the toy world has {len(questions)} base questions, too few for {n_heldout} held-out "
                "instructions; raise base_people or lower heldout_instructions"
            )
        asked = [(q, a, None) for q, a in questions]  # a third field: no plain form
        train = asked[:n_q] + chores[: n_train - n_q]
        heldout = asked[n_q : n_q + n_heldout // 2] + chores[n_train - n_q : n_train - n_q + n_heldout - n_heldout // 2]
    else:
        train, heldout = chores[:n_train], chores[n_train:]
    rng.shuffle(train)
    return (
        [{"prompt": p, "completion": c} for p, c, _ in train],
        [{"prompt": p, "answer": c, "plain": plain or JA.plain(c)} for p, c, plain in heldout],
    )
