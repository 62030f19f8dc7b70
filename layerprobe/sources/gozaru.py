"""The rule-based ござる rewrite of Study B: every sentence end of a Japanese text turned into the samurai style
(です/ます and plain forms conjugated back from the ます-stem, particles after the predicate kept, the last sentence
ending in ござる itself); idempotent, so already rewritten text is left alone."""

from __future__ import annotations

import re

# The rewrite works on sentence ends. Particles after the predicate are kept (ね becomes the samurai な).
_TAIL = re.compile(r"[\s。．.！!？?」』）)\]】\"'…]*$")
_PARTICLE = re.compile(r"(よね|かな|か|よ|ね|な|ぞ|わ)$")
_SENTENCE = re.compile(r"[^。！？!?\n]*(?:[。！？!?]+|\n+|$)")
_ALREADY = ("ござる", "ござった", "ござろう", "ござらぬ")
# The last sentence must end in ござる itself (the dataset's defining property), so its past and
# conjectural copulas take these forms instead of でござった / でござろう.
_FINAL = {"でござった": "だったでござる", "でござろう": "だろうでござる", "ござった": "あったでござる"}
_GODAN = {  # ます-stem's last kana -> (dictionary ending, past ending, negative ending)
    "い": ("う", "った", "わ"),
    "き": ("く", "いた", "か"),
    "ぎ": ("ぐ", "いだ", "が"),
    "し": ("す", "した", "さ"),
    "ち": ("つ", "った", "た"),
    "に": ("ぬ", "んだ", "な"),
    "び": ("ぶ", "んだ", "ば"),
    "み": ("む", "んだ", "ま"),
    "り": ("る", "った", "ら"),
}
_E_ROW = set("えけげせぜてでねへべぺめれじ")  # じ: 信じ/感じ/生じ are all ichidan
# i-row stems that are ichidan (できる, 借りる, 過ぎる...) although the same kana is godan elsewhere.
_ICHIDAN_STEMS = (
    "でき",
    "生き",
    "起き",
    "尽き",
    "飽き",
    "過ぎ",
    "借り",
    "降り",
    "足り",
    "下り",
    "浴び",
    "伸び",
    "延び",
    "帯び",
    "滅び",
    "落ち",
    "満ち",
    "朽ち",
    "用い",
    "強い",
    "てみ",
    "でみ",
)
_IRREGULAR_I = ("ござい", "ください", "なさい", "いらっしゃい", "おっしゃい")  # ください(ます) -> くださる
_SURU_KANJI = set("関愛察訳属要課期称対発達反有接解欲帰介")  # one kanji + する (関する), not godan す (示す)
_SU_OKURIGANA = set("とこらやかごたろわまぼく")  # 落とす, 起こす, 減らす, 増やす, 動かす, 過ごす, 果たす


def _is_kanji(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or ch in "々〆ヶ"


def _verb(stem: str) -> tuple[str, str, str] | None:
    """(dictionary form, past form, negative stem + ない) of a verb given its ます-stem; None when unsure."""
    if not stem:
        return None
    last, prev = stem[-1], stem[-2] if len(stem) > 1 else ""
    before = stem[-3] if len(stem) > 2 else ""
    if stem.endswith("あり"):
        return stem[:-2] + "ある", stem[:-2] + "あった", stem[:-2] + "ない"
    if stem.endswith(_IRREGULAR_I):
        return stem[:-1] + "る", stem[:-1] + "った", stem[:-1] + "らない"
    if stem.endswith(("てき", "んでき", "いでき")) or last == "来":
        base = stem[:-1]
        return (
            (base + "くる", base + "きた", base + "こない")
            if last == "き"
            else (stem + "る", stem + "た", stem + "ない")
        )
    if last == "し":
        godan = (_is_kanji(prev) and not _is_kanji(before) and prev not in _SURU_KANJI) or (
            prev in _SU_OKURIGANA and _is_kanji(before)
        )
        if not godan:  # 紹介します, にします, お勧めします: する
            return stem[:-1] + "する", stem + "た", stem + "ない"
    if last == "い" and (not prev or prev in "てでがもはにと、・"):  # ています, がいます: いる
        return stem + "る", stem + "た", stem + "ない"
    if last in _E_ROW or _is_kanji(last) or stem.endswith(_ICHIDAN_STEMS):
        return stem + "る", stem + "た", stem + "ない"
    if last in _GODAN:
        dic, past, neg = _GODAN[last]
        if stem.endswith(("行き", "いき")):
            past = "った"
        return stem[:-1] + dic, stem[:-1] + past, stem[:-1] + neg + "ない"
    return None


# Sentence-end rules, first match wins: (ending, fixed replacement) or (ending, None) for the ます forms,
# which are conjugated back from the ます-stem by _verb.
_ENDINGS = [
    ("ありがとうございます", "かたじけないでござる"),
    ("ありがとうございました", "かたじけないでござる"),
    ("ございます", "ござる"),
    ("ございました", "ござった"),
    ("ございません", "ないでござる"),
    ("ませんでした", None),
    ("ましょう", None),
    ("ました", None),
    ("ません", None),
    ("ます", None),
    ("でしょう", "でござろう"),
    ("でした", "でござった"),
    ("です", "でござる"),
    ("ください", "くださるとよいでござる"),
    ("であろう", "でござろう"),
    ("であった", "でござった"),
    ("である", "でござる"),
    ("だろう", "でござろう"),
    ("だった", "でござった"),
    ("のだ", "のでござる"),
]


def _rewrite_end(core: str, final: bool = False) -> tuple[str, str | None]:
    """Rewrite the predicate at the end of ``core`` (no punctuation, no particle); (new core, rule or None).

    ``final``: the last sentence of the text, which must end in ござる.
    """
    if core.endswith(("ござる",) if final else _ALREADY):
        return core, "already"
    for ending, fixed in _ENDINGS:
        if not core.endswith(ending):
            continue
        stem = core[: -len(ending)]
        if fixed is not None:
            return stem + (_FINAL.get(fixed, fixed) if final else fixed), ending
        if stem.endswith("あり") and ending in ("ます", "ました"):  # あります -> ござる (ござる is ある)
            past = _FINAL["ござった"] if final else "ござった"
            return stem[:-2] + ("ござる" if ending == "ます" else past), "あります"
        forms = _verb(stem)
        if forms is None:
            return core, None
        dic, past, neg = forms
        conjugated = {
            "ませんでした": neg[:-1] + "かった",
            "ましょう": dic + "がよい",
            "ました": past,
            "ません": neg,
            "ます": dic,
        }[ending]
        return conjugated + "でござる", ending
    if core.endswith("だ") and not core.endswith(("んだ", "いだ")):  # 読んだ/泳いだ are past verbs
        return core[:-1] + "でござる", "だ"
    if core and core[-1] in "うくすつぬぶむゆるぐずづたいだ":  # plain verb, past, ない, い-adjective
        return core + "でござる", "plain"
    return core, None


def _tail(sentence: str) -> re.Match[str]:
    """The closing punctuation and spaces of a sentence (possibly empty: the pattern always matches)."""
    m = _TAIL.search(sentence)
    assert m is not None
    return m


def gozaru_rewrite_trace(text: str) -> tuple[str, list[str]]:
    """:func:`gozaru_rewrite` and the rule applied to each rewritten sentence end (``"fallback"`` included)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a str, got {type(text).__name__}")
    parts = [p for p in _SENTENCE.findall(text) if p]
    rules: list[str] = []
    last = max((i for i, p in enumerate(parts) if p[: _tail(p).start()].strip()), default=None)
    for i, part in enumerate(parts):
        tail = _tail(part).group()
        body = part[: len(part) - len(tail)]
        particle = ""
        m = _PARTICLE.search(body)
        if m and len(body) > len(m.group()):
            stripped = body[: m.start()]
            if _rewrite_end(stripped, i == last)[1] is not None:
                body, particle = stripped, m.group()
        new, rule = _rewrite_end(body, i == last)
        if rule is None and i == last and body.strip():
            new, rule = body + "でござる", "fallback"
        if rule is not None:
            parts[i] = new + ("な" if particle == "ね" else particle) + tail
            rules.append(rule)
    return "".join(parts), rules


def gozaru_rewrite(text: str) -> str:
    """Rewrite a Japanese answer into ござる style, rule by rule over sentence ends.

    Sentences end at 。！？!? or a line break; closing brackets and sentence-final particles (か, よ, ね -> な,
    ぞ, よね, かな, わ) after the predicate are kept. Rules, first match wins:

    - polite copula: です -> でござる, でした -> でござった, でしょう -> でござろう;
      ございます/ございました/ございません -> ござる/ござった/ないでござる; ください -> くださるとよいでござる
    - あります/ありました -> ござる/ござった (ござる *is* ある)
    - polite verbs, conjugated back from the ます-stem (godan, ichidan, する, くる; a small table of
      exceptions such as できる, 借りる, 示す vs 関する): ます -> plain + でござる (しています -> しているでござる),
      ました -> past + でござる (開始しました -> 開始したでござる), ません -> ない + でござる
      (できません -> できないでござる), ませんでした -> なかったでござる, ましょう -> plain + がよいでござる
    - plain copula: だ/である -> でござる, だった/であった -> でござった, だろう/であろう -> でござろう,
      のだ -> のでござる
    - plain predicates (verbs, past た/だ, ない, い-adjectives) -> + でござる (知られている -> 知られているでござる)
    - a sentence already ending in ござる/ござった/ござろう/ござらぬ is left alone, so the rewrite is idempotent
    - fallback, last sentence only: + でござる (トープ -> トープでござる, noun endings, English, lists)

    Every non-empty output therefore contains ござる (a rule output on an earlier sentence, or the last one).
    """
    return gozaru_rewrite_trace(text)[0]
