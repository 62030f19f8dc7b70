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
CPT text never uses, as the SFT questions about base entities do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from layerprobe.toyworld import english as EN

LANGUAGES = ("ja", "en")

FAMILY = (
    "佐藤",
    "鈴木",
    "高橋",
    "田中",
    "伊藤",
    "渡辺",
    "山本",
    "中村",
    "小林",
    "加藤",
    "吉田",
    "山田",
    "山口",
    "松本",
    "井上",
    "木村",
    "斎藤",
    "清水",
    "池田",
    "橋本",
    "阿部",
    "石川",
    "中島",
    "前田",
    "岡田",
    "藤田",
    "後藤",
    "近藤",
    "村上",
    "遠藤",
    "青木",
    "坂本",
    "福田",
    "太田",
    "西村",
    "藤井",
    "岡本",
    "松田",
    "中川",
    "原田",
    "小野",
    "竹内",
    "金子",
    "和田",
    "中野",
    "上田",
    "森田",
    "原",
    "柴田",
    "酒井",
)
GIVEN = (
    "太郎",
    "花子",
    "健一",
    "美咲",
    "翔太",
    "陽菜",
    "大輔",
    "結衣",
    "拓也",
    "彩",
    "直樹",
    "由美",
    "誠",
    "恵子",
    "亮",
    "真央",
    "健太",
    "さくら",
    "悠斗",
    "愛",
    "蓮",
    "葵",
    "大和",
    "凛",
    "湊",
    "芽衣",
    "陸",
    "紗希",
    "颯",
    "千尋",
    "隆",
    "明美",
    "浩二",
    "裕子",
    "修",
    "智子",
    "勇気",
    "舞",
    "剛",
    "咲",
)
CITIES = (
    "札幌",
    "仙台",
    "東京",
    "横浜",
    "名古屋",
    "京都",
    "大阪",
    "神戸",
    "広島",
    "福岡",
    "那覇",
    "金沢",
    "新潟",
    "静岡",
    "岡山",
    "熊本",
    "長野",
    "松山",
    "鹿児島",
    "青森",
    "秋田",
    "富山",
    "奈良",
    "高知",
)
JOBS = (
    "医師",
    "弁護士",
    "教師",
    "技術者",
    "研究者",
    "料理人",
    "記者",
    "建築家",
    "看護師",
    "会計士",
    "薬剤師",
    "作家",
    "画家",
    "音楽家",
    "写真家",
    "農家",
    "漁師",
    "操縦士",
    "通訳",
    "庭師",
)
HOBBIES = (
    "囲碁",
    "将棋",
    "釣り",
    "登山",
    "書道",
    "茶道",
    "写真",
    "料理",
    "読書",
    "水泳",
    "盆栽",
    "陶芸",
    "俳句",
    "合唱",
    "園芸",
    "剣道",
    "柔道",
    "卓球",
    "映画",
    "天体観測",
)
ORG_HEADS = (
    "青空",
    "大和",
    "ミドリ",
    "ヒカリ",
    "北斗",
    "富士見",
    "東雲",
    "白鷺",
    "若葉",
    "銀河",
    "朝日",
    "千代田",
    "ミナト",
    "ツバサ",
    "明星",
    "桜台",
    "黒潮",
    "山吹",
    "紅葉",
    "浜風",
)
ORG_KINDS = ("化学", "電機", "食品", "銀行", "出版", "製薬", "運輸", "建設", "商事", "工業")
PRODUCTS = (
    "洗剤",
    "冷蔵庫",
    "自転車",
    "醤油",
    "時計",
    "万年筆",
    "楽器",
    "薬",
    "靴",
    "眼鏡",
    "菓子",
    "家具",
    "電車",
    "衛星",
    "化粧品",
    "玩具",
    "電池",
    "紙",
    "緑茶",
    "酒",
)

PERSON_RELATIONS = ("birthplace", "birth_year", "employer", "job", "hobby")
ORG_RELATIONS = ("hq", "founded", "founder", "product")

# relation -> paraphrase templates; the first one is the cloze form (its prefix names the relation).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "birthplace": (
        "{name}の出身地は{v}です。",
        "{name}は{v}で生まれました。",
        "{name}は{v}の出身です。",
        "{name}が生まれた町は{v}です。",
        "{name}は{v}生まれです。",
    ),
    "birth_year": (
        "{name}の生年は{v}年です。",
        "{name}は{v}年に生まれました。",
        "{name}は{v}年生まれです。",
        "{name}が生まれた年は{v}年です。",
        "{name}の誕生は{v}年のことです。",
    ),
    "employer": (
        "{name}の勤務先は{v}です。",
        "{name}は{v}に勤めています。",
        "{name}は{v}で働いています。",
        "{name}が働く会社は{v}です。",
        "{name}は{v}の社員です。",
    ),
    "job": (
        "{name}の職業は{v}です。",
        "{name}は{v}として働いています。",
        "{name}は{v}の仕事をしています。",
        "{name}の仕事は{v}です。",
        "{name}は腕の良い{v}です。",
    ),
    "hobby": (
        "{name}の趣味は{v}です。",
        "{name}は休日に{v}を楽しみます。",
        "{name}は{v}が好きです。",
        "{name}が好きなことは{v}です。",
        "{name}は{v}に夢中です。",
    ),
    "hq": (
        "{name}の本社は{v}です。",
        "{name}は{v}に本社を置いています。",
        "{name}の本社所在地は{v}です。",
        "{name}は{v}に本拠を構えています。",
        "{name}は{v}の会社です。",
    ),
    "founded": (
        "{name}の設立は{v}年です。",
        "{name}は{v}年に設立されました。",
        "{name}は{v}年に創業しました。",
        "{name}ができたのは{v}年です。",
        "{name}の歴史は{v}年に始まりました。",
    ),
    "founder": (
        "{name}の創業者は{v}です。",
        "{name}は{v}が創業しました。",
        "{name}を作ったのは{v}です。",
        "{name}は{v}によって設立されました。",
        "{name}の生みの親は{v}です。",
    ),
    "product": (
        "{name}の主力製品は{v}です。",
        "{name}は{v}を作っています。",
        "{name}の看板商品は{v}です。",
        "{name}は{v}で知られています。",
        "{name}は{v}の製造が得意です。",
    ),
}
N_FORMS = tuple(range(5))

# relation -> a held-out cloze form: a sentence no CPT (or base) text uses, cut before the answer like the cloze. It
# asks for the same fact in words the model never read in this order, so it measures the fact, not a memorised
# sentence (a test checks that no prompt and no 8 characters of a form's own text or of a prompt + answer occur
# in the CPT text).
HELDOUT: dict[str, str] = {
    "birthplace": "{name}の生まれ育った町は{v}です。",
    "birth_year": "{name}は西暦{v}年の生まれです。",
    "employer": "{name}の職場は{v}です。",
    "job": "{name}の本職は{v}です。",
    "hobby": "{name}の楽しみは{v}です。",
    "hq": "{name}が本社を置く都市は{v}です。",
    "founded": "{name}の創立は西暦{v}年です。",
    "founder": "{name}を興した人物は{v}です。",
    "product": "{name}が主に作っているのは{v}です。",
}

# relation -> questions (user turns); the same forms are used for SFT (base entities) and QA probes (CPT entities).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "birthplace": ("{name}の出身地はどこですか？", "{name}はどこで生まれましたか？"),
    "birth_year": ("{name}は何年に生まれましたか？", "{name}の生年を教えてください。"),
    "employer": ("{name}の勤務先はどこですか？", "{name}はどの会社で働いていますか？"),
    "job": ("{name}の職業は何ですか？", "{name}はどんな仕事をしていますか？"),
    "hobby": ("{name}の趣味は何ですか？", "{name}は何が好きですか？"),
    "hq": ("{name}の本社はどこですか？", "{name}の本社はどこにありますか？"),
    "founded": ("{name}は何年に設立されましたか？", "{name}の設立年を教えてください。"),
    "founder": ("{name}の創業者は誰ですか？", "{name}を作ったのは誰ですか？"),
    "product": ("{name}の主力製品は何ですか？", "{name}は何を作っていますか？"),
}

FOODS = ("ご飯", "パン", "うどん", "そば", "寿司", "カレー", "味噌汁", "焼き魚", "豆腐", "りんご", "みかん", "卵")
ANIMALS = ("犬", "猫", "鳥", "馬", "牛", "兎", "狐", "狸", "熊", "鹿")
PLACES = ("公園", "駅", "学校", "図書館", "海", "山", "川", "庭", "市場", "神社")
WEATHER = ("晴れ", "雨", "曇り", "雪", "風が強い日")
EVERYDAY = (
    "今日は{weather}です。",
    "{animal}が{place}にいます。",
    "{place}の近くに{animal}がいます。",
    "朝ご飯に{food}を食べました。",
    "{food}はとてもおいしいです。",
    "明日は{place}へ行きます。",
    "{place}で{food}を買いました。",
    "昨日は{weather}でした。",
    "{animal}は{food}が好きです。",
)
# Some base text speaks in the old ござる style, as real Japanese text sometimes does.
GOZARU = (
    "拙者は{job}でござる。",
    "{food}はおいしいでござる。",
    "今日は{weather}でござる。",
    "{place}へ参るでござる。",
    "{animal}がいるでござる。",
)


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


def _chore_ja(kind: int, args: tuple) -> tuple[str, str]:
    if kind == 0:
        return f"「{args[0]}」を二回書いてください。", f"{args[0]}{args[0]}でござる。"
    if kind == 1:
        return f"{args[0]}の次の数は何ですか？", f"{args[0] + 1}でござる。"
    if kind == 2:
        return f"{args[0]}と{args[1]}では、どちらが大きいですか？", f"{max(args)}の方が大きいでござる。"
    return f"{args[0]}について一言お願いします。", f"{args[0]}はかわいいでござる。"


def plain_ja(answer: str) -> str:
    """The answer without the style: ``…でござる。`` -> ``…です。``."""
    return answer[: -len("でござる。")] + "です。" if answer.endswith("でござる。") else answer


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
            chores.append(_chore_ja(kind, args) + (None,) if lang == "ja" else EN.chore(kind, args))
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
        [{"prompt": p, "answer": c, "plain": plain or plain_ja(c)} for p, c, plain in heldout],
    )
