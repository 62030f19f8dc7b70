"""The ござる rewrite (a table of dolly-15k-ja sentences, properties) and the loaders of shared/data."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layerprobe.sources.gozaru import gozaru_rewrite_trace
from layerprobe.sources.realdata import (
    clean_aozora,
    default_data_dir,
    gozaru_rewrite,
    load_dolly_gozaru,
    load_jcommonsenseqa,
    load_news_text,
    load_soseki,
    strip_markdown,
)


def shared(sub: str = ""):
    try:
        path = default_data_dir() / sub
    except FileNotFoundError as e:
        pytest.skip(f"shared data absent: {e}")
    if not path.exists():
        pytest.skip(f"shared data absent: no {path}")
    return path


# (dolly-15k-ja output, or the end of one; expected rewrite; rule of the last sentence)
TABLE = [
    (
        "ヴァージン・オーストラリアは、2000年8月31日にヴァージン・ブルーとして、2機の航空機で単一路線の運航を開始しました。",
        "ヴァージン・オーストラリアは、2000年8月31日にヴァージン・ブルーとして、2機の航空機で単一路線の運航を開始したでござる。",
        "ました",
    ),
    ("トープ", "トープでござる", "fallback"),
    (
        "ラクダは、長時間にわたってエネルギーと水分で満たされた状態を保つために、腰の脂肪を利用しています。",
        "ラクダは、長時間にわたってエネルギーと水分で満たされた状態を保つために、腰の脂肪を利用しているでござる。",
        "ます",
    ),
    ("プロ野球の試合では9イニングが行われます。", "プロ野球の試合では9イニングが行われるでござる。", "ます"),
    (
        "クマムシは水グマとも呼ばれ、8本の脚を持つ微小な動物です。宇宙を含む多様な環境下で生存できる！",
        "クマムシは水グマとも呼ばれ、8本の脚を持つ微小な動物でござる。宇宙を含む多様な環境下で生存できるでござる！",
        "plain",
    ),
    (
        "2006年に亡くなった時、オクタヴィア・バトラーは58歳でした。",
        "2006年に亡くなった時、オクタヴィア・バトラーは58歳だったでござる。",
        "でした",
    ),
    ("彼は政治家だった。", "彼は政治家だったでござる。", "だった"),
    (
        "キューバ危機は、1962年10月16日から11月20日までの35日間であった。",
        "キューバ危機は、1962年10月16日から11月20日までの35日間だったでござる。",
        "であった",
    ),
    ("ホッブズは虎だった。スヌーピーは犬だった。", "ホッブズは虎でござった。スヌーピーは犬だったでござる。", "だった"),
    (
        "エトリアはギリシャの山岳地帯なので、おそらく違うでしょう。",
        "エトリアはギリシャの山岳地帯なので、おそらく違うだろうでござる。",
        "でしょう",
    ),
    (
        "その原因は、社会的、政治的、経済的要因など複数ありました。",
        "その原因は、社会的、政治的、経済的要因など複数あったでござる。",
        "あります",
    ),
    ("ライフサイクルには、7つのフェーズがあります。", "ライフサイクルには、7つのフェーズがござる。", "あります"),
    ("ジャガイモはスポーツやゲームではありません。", "ジャガイモはスポーツやゲームではないでござる。", "ません"),
    (
        "そのアイデアは悪くないアイデアかもしれませんね。",
        "そのアイデアは悪くないアイデアかもしれないでござるな。",
        "ません",
    ),
    ("2021年は開催されませんでした。", "2021年は開催されなかったでござる。", "ませんでした"),
    ("アメリカの存在を知りませんでした。", "アメリカの存在を知らなかったでござる。", "ませんでした"),
    ("まず、旅行の手配を考えましょう。", "まず、旅行の手配を考えるがよいでござる。", "ましょう"),
    ("クトゥブ・ミナールへ行きましょう。", "クトゥブ・ミナールへ行くがよいでござる。", "ましょう"),
    (
        "あまり遅くならないうちに、楽しんでください。",
        "あまり遅くならないうちに、楽しんでくださるとよいでござる。",
        "ください",
    ),
    ("ミハエル・シューマッハは世界最高の選手だ。", "ミハエル・シューマッハは世界最高の選手でござる。", "だ"),
    ("レゴはデンマークの会社が作ったものである。", "レゴはデンマークの会社が作ったものでござる。", "である"),
    ("ステアリングは全く揺れませんか？", "ステアリングは全く揺れないでござるか？", "ません"),
    ("ありがとうございました。", "かたじけないでござる。", "ありがとうございました"),
    (
        "5階から1階までの5フロア（約60フィート）をカバーする最長滑走距離",
        "5階から1階までの5フロア（約60フィート）をカバーする最長滑走距離でござる",
        "fallback",
    ),
    (
        "ニューヨーク州\nイリノイ州\n世界の国々を紹介します：イラン、ブラジル",
        "ニューヨーク州\nイリノイ州\n世界の国々を紹介します：イラン、ブラジルでござる",
        "fallback",
    ),
    ("- 博物館を見学する\n- 公園を歩く", "- 博物館を見学するでござる\n- 公園を歩くでござる", "plain"),
    ("Paris.", "Parisでござる.", "fallback"),
]
# The ます-stem is conjugated back to plain forms: godan, ichidan, する/す, くる, いる, irregular ください.
VERBS = [
    ("思います", "思う"),
    ("言いました", "言った"),
    ("東京を指します", "東京を指す"),
    ("新製品を紹介します", "新製品を紹介する"),
    ("学校へ行きました", "学校へ行った"),
    ("財布を落としました", "財布を落とした"),
    ("英語が話せます", "英語が話せる"),
    ("日本語ができます", "日本語ができる"),
    ("寒くなってきます", "寒くなってくる"),
    ("明日来ます", "明日来る"),
    ("猫がいます", "猫がいる"),
    ("道具を用います", "道具を用いる"),
    ("本を借りません", "本を借りない"),
    ("映画を見ます", "映画を見る"),
    ("金魚が死にました", "金魚が死んだ"),
    ("大学で学びました", "大学で学んだ"),
    ("海で泳ぎます", "海で泳ぐ"),
    ("東京に住んでいます", "東京に住んでいる"),
    ("何もしません", "何もしない"),
    ("手紙を書きません", "手紙を書かない"),
    ("それを示しません", "それを示さない"),
    ("水を飲みました", "水を飲んだ"),
    ("席に座ります", "席に座る"),
    ("会議を始めます", "会議を始める"),
    ("子どもが生まれました", "子どもが生まれた"),
]


@pytest.mark.parametrize("text,expected,rule", TABLE)
def test_gozaru_table(text, expected, rule):
    out, rules = gozaru_rewrite_trace(text)
    assert out == expected
    assert rules[-1] == rule
    assert gozaru_rewrite(out) == out


@pytest.mark.parametrize("text,plain", VERBS)
def test_gozaru_conjugates_polite_verbs(text, plain):
    assert gozaru_rewrite(text + "。") == plain + "でござる。"


def test_gozaru_keeps_empty_text():
    assert gozaru_rewrite("") == "" and gozaru_rewrite(" \n") == " \n"
    with pytest.raises(ValueError, match="str"):
        gozaru_rewrite(None)


_ALPHABET = list(
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはまみむめもやゆよらりるれろわをんがだでばアイウエオカキクー"
    "東京日本語学生先話食見行来出人時国年大中小abcXYZ0123 、。！？!?「」（）\n…"
)
_ENDINGS = [
    "です",
    "でした",
    "でしょう",
    "ます",
    "ました",
    "ません",
    "ませんでした",
    "ましょう",
    "だ",
    "である",
    "だった",
    "ください",
    "ございます",
    "ござる",
    "ござった",
    "か",
    "ね",
    "よ",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet=_ALPHABET, max_size=12), st.sampled_from(_ENDINGS)), max_size=8))
def test_gozaru_properties(pieces):
    text = "".join(pieces)
    out = gozaru_rewrite(text)
    if any(not c.isspace() and c not in "。．.！!？?」』）)]】\"'…" for c in text):
        assert "ござる" in out
    assert gozaru_rewrite(out) == out  # idempotent: already rewritten sentence ends are left alone


def test_gozaru_on_the_whole_dolly_file():
    rows = load_dolly_gozaru(shared("dolly-15k-ja.jsonl"), rewrite=False)
    assert len(rows) == 15015
    ruled = 0
    for r in rows:
        out, rules = gozaru_rewrite_trace(r["output"])
        if r["output"].strip():
            assert "ござる" in out
        ruled += bool(rules) and rules[-1] not in ("fallback", "already")
    assert ruled / len(rows) > 0.70  # measured 0.716: the last sentence is handled by a real rule


def test_load_dolly_gozaru_samples_deterministically(tmp_path):
    src = tmp_path / "dolly-15k-ja.jsonl"
    src.write_text(
        "\n".join(
            json.dumps(
                {
                    "index": str(i),
                    "instruction": f"質問{i}",
                    "input": "" if i % 2 else "文脈",
                    "output": f"答えは{i}です。",
                    "category": "x",
                },
                ensure_ascii=False,
            )
            for i in range(20)
        )
        + "\n",
        encoding="utf-8",
    )
    rows = load_dolly_gozaru(tmp_path, n=5, seed=1)
    assert rows == load_dolly_gozaru(src, n=5, seed=1) and rows != load_dolly_gozaru(src, n=5, seed=2)
    assert len(rows) == 5 and set(rows[0]) == {"instruction", "input", "output"}
    assert all(r["output"] == f"答えは{r['instruction'][2:]}でござる。" for r in rows)
    assert [r["instruction"] for r in load_dolly_gozaru(src, n=3, seed=None)] == ["質問0", "質問1", "質問2"]
    assert load_dolly_gozaru(src, rewrite=False)[0]["output"] == "答えは0です。"
    src.write_text('{"instruction": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="instruction and output"):
        load_dolly_gozaru(src)


def test_strip_markdown():
    assert strip_markdown("# 見出し") == ""
    assert strip_markdown("---") == ""
    assert strip_markdown("- **重要**な[記事](http://x)と`code`と*強調*") == "重要な記事とcodeと強調"
    assert strip_markdown("> 1. 引用") == "引用"
    assert strip_markdown("2*3*4は24") == "2*3*4は24"


def test_load_news_text(tmp_path):
    (tmp_path / "science.md").write_text(
        "深海で**新種**を発見しました。\n\n# 見出し\n宇宙の記事です。\n", encoding="utf-8"
    )
    (tmp_path / "sports.md").write_text("- 試合に勝ちました。\n", encoding="utf-8")
    assert load_news_text(tmp_path) == ["深海で新種を発見しました。", "宇宙の記事です。", "試合に勝ちました。"]
    assert load_news_text(tmp_path, topics=["sports"]) == ["試合に勝ちました。"]
    with pytest.raises(ValueError, match="science"):
        load_news_text(tmp_path, topics=["weather"])
    with pytest.raises(FileNotFoundError):
        load_news_text(tmp_path / "none")


def test_load_news_text_real():
    texts = load_news_text(shared("fictional-news-ja"))
    assert len(texts) == 1500 and all(len(t) > 50 for t in texts)  # 300 a topic: blank lines between
    assert len(load_news_text(shared("fictional-news-ja"), topics=["politics"])) == 300


AOZORA = (
    "吾輩は猫である\r\n夏目漱石\r\n\r\n-------------------------------------------------------\r\n"
    "【テキスト中に現れる記号について】\r\n《》：ルビ\r\n-------------------------------------------------------\r\n"
    "\r\n　一\r\n\r\n　吾輩《わがはい》は猫である。名前はまだ無い。\r\n　｜書生《しょせい》という［＃「という」に傍点］人間。\r\n"
    "\r\n\r\n\r\n底本：「夏目漱石全集」ちくま文庫\r\n入力：xx\r\n"
)


def test_clean_aozora_drops_header_footer_ruby_and_notes():
    assert clean_aozora(AOZORA) == "一\n\n　吾輩は猫である。名前はまだ無い。\n　書生という人間。"


def test_load_soseki_reads_utf8_and_shift_jis(tmp_path):
    (tmp_path / "a.txt").write_bytes(AOZORA.encode("cp932"))
    (tmp_path / "b.txt").write_text("　本文だけ。\n", encoding="utf-8")
    assert load_soseki(tmp_path) == [clean_aozora(AOZORA), "本文だけ。"]
    assert load_soseki(tmp_path, files=["b.txt"]) == ["本文だけ。"]


def test_load_soseki_real():
    books = load_soseki(shared("aozora"))
    assert len(books) == 2 and all(len(b) > 80_000 for b in books)
    assert not any(mark in b for b in books for mark in ("《", "［＃", "｜", "底本："))
    assert books[0].startswith("一\n\n　親譲りの無鉄砲で")


def test_load_jcommonsenseqa(tmp_path):
    rows = [
        {"q_id": i, "question": f"問{i}", **{f"choice{j}": f"c{j}" for j in range(5)}, "label": i % 5}
        for i in range(10)
    ]
    (tmp_path / "x_valid.json").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    assert load_jcommonsenseqa(tmp_path) == rows
    assert load_jcommonsenseqa(tmp_path / "x_valid.json", n=3) == rows[:3]
    assert len(load_jcommonsenseqa(tmp_path, n=4, seed=0)) == 4
    with pytest.raises(FileNotFoundError, match="train"):
        load_jcommonsenseqa(tmp_path, split="train")
    (tmp_path / "bad_valid.json").write_text(json.dumps({**rows[0], "label": 7}))
    with pytest.raises(ValueError, match="label"):
        load_jcommonsenseqa(tmp_path / "bad_valid.json")


def test_load_jcommonsenseqa_real():
    rows = load_jcommonsenseqa(shared("jcommonsenseqa"))
    assert len(rows) == 1119 and len(load_jcommonsenseqa(shared("jcommonsenseqa"), split="train")) == 8939
    assert (
        rows[0]["question"] == "電子機器で使用される最も主要な電子回路基板の事をなんと言う？" and rows[0]["label"] == 2
    )


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LAYERPROBE_SHARED_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("LAYERPROBE_SHARED_DATA", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="LAYERPROBE_SHARED_DATA"):
        default_data_dir()
