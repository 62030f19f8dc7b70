"""The toy world's Japanese: the name and value pools its entities are drawn from, the paraphrase forms of each
fact (the first one is the cloze form), the held-out cloze forms and the questions no CPT text uses, the everyday
and ござる-style sentences of the base text, and the chores of the SFT data.

:mod:`layerprobe.sources.toyworld.world` draws the world from these pools; :mod:`layerprobe.sources.toyworld.english`
renders the same world in English, form by form.
"""

from __future__ import annotations

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


def chore(kind: int, args: tuple) -> tuple[str, str]:
    """A Japanese chore (see ``world._draw_chore``): (prompt, answer in ござる style)."""
    if kind == 0:
        return f"「{args[0]}」を二回書いてください。", f"{args[0]}{args[0]}でござる。"
    if kind == 1:
        return f"{args[0]}の次の数は何ですか？", f"{args[0] + 1}でござる。"
    if kind == 2:
        return f"{args[0]}と{args[1]}では、どちらが大きいですか？", f"{max(args)}の方が大きいでござる。"
    return f"{args[0]}について一言お願いします。", f"{args[0]}はかわいいでござる。"


def plain(answer: str) -> str:
    """The answer without the style: ``…でござる。`` -> ``…です。``."""
    return answer[: -len("でござる。")] + "です。" if answer.endswith("でござる。") else answer
