"""The toy world rendered in English, for real models whose tokenizers and pretraining are English.

The world itself (entities, facts, instructions) is drawn once, in :mod:`layerprobe.toyworld.world`; this module
only renders it: every name and value has an English form, and the templates and questions mirror the Japanese
ones one to one (the first template is the cloze form; the held-out cloze forms and the questions are never used
in the CPT text). Answers
to instructions keep the ござる ending, so the style and its metric are the same in both languages.
"""

from __future__ import annotations

FAMILY = {
    "佐藤": "Sato",
    "鈴木": "Suzuki",
    "高橋": "Takahashi",
    "田中": "Tanaka",
    "伊藤": "Ito",
    "渡辺": "Watanabe",
    "山本": "Yamamoto",
    "中村": "Nakamura",
    "小林": "Kobayashi",
    "加藤": "Kato",
    "吉田": "Yoshida",
    "山田": "Yamada",
    "山口": "Yamaguchi",
    "松本": "Matsumoto",
    "井上": "Inoue",
    "木村": "Kimura",
    "斎藤": "Saito",
    "清水": "Shimizu",
    "池田": "Ikeda",
    "橋本": "Hashimoto",
    "阿部": "Abe",
    "石川": "Ishikawa",
    "中島": "Nakajima",
    "前田": "Maeda",
    "岡田": "Okada",
    "藤田": "Fujita",
    "後藤": "Goto",
    "近藤": "Kondo",
    "村上": "Murakami",
    "遠藤": "Endo",
    "青木": "Aoki",
    "坂本": "Sakamoto",
    "福田": "Fukuda",
    "太田": "Ota",
    "西村": "Nishimura",
    "藤井": "Fujii",
    "岡本": "Okamoto",
    "松田": "Matsuda",
    "中川": "Nakagawa",
    "原田": "Harada",
    "小野": "Ono",
    "竹内": "Takeuchi",
    "金子": "Kaneko",
    "和田": "Wada",
    "中野": "Nakano",
    "上田": "Ueda",
    "森田": "Morita",
    "原": "Hara",
    "柴田": "Shibata",
    "酒井": "Sakai",
}
GIVEN = {
    "太郎": "Taro",
    "花子": "Hanako",
    "健一": "Kenichi",
    "美咲": "Misaki",
    "翔太": "Shota",
    "陽菜": "Hina",
    "大輔": "Daisuke",
    "結衣": "Yui",
    "拓也": "Takuya",
    "彩": "Aya",
    "直樹": "Naoki",
    "由美": "Yumi",
    "誠": "Makoto",
    "恵子": "Keiko",
    "亮": "Ryo",
    "真央": "Mao",
    "健太": "Kenta",
    "さくら": "Sakura",
    "悠斗": "Yuto",
    "愛": "Ai",
    "蓮": "Ren",
    "葵": "Aoi",
    "大和": "Yamato",
    "凛": "Rin",
    "湊": "Minato",
    "芽衣": "Mei",
    "陸": "Riku",
    "紗希": "Saki",
    "颯": "Hayate",
    "千尋": "Chihiro",
    "隆": "Takashi",
    "明美": "Akemi",
    "浩二": "Koji",
    "裕子": "Yuko",
    "修": "Osamu",
    "智子": "Tomoko",
    "勇気": "Yuki",
    "舞": "Mai",
    "剛": "Tsuyoshi",
    "咲": "Saku",
}
CITIES = {
    "札幌": "Sapporo",
    "仙台": "Sendai",
    "東京": "Tokyo",
    "横浜": "Yokohama",
    "名古屋": "Nagoya",
    "京都": "Kyoto",
    "大阪": "Osaka",
    "神戸": "Kobe",
    "広島": "Hiroshima",
    "福岡": "Fukuoka",
    "那覇": "Naha",
    "金沢": "Kanazawa",
    "新潟": "Niigata",
    "静岡": "Shizuoka",
    "岡山": "Okayama",
    "熊本": "Kumamoto",
    "長野": "Nagano",
    "松山": "Matsuyama",
    "鹿児島": "Kagoshima",
    "青森": "Aomori",
    "秋田": "Akita",
    "富山": "Toyama",
    "奈良": "Nara",
    "高知": "Kochi",
}
JOBS = {
    "医師": "doctor",
    "弁護士": "lawyer",
    "教師": "teacher",
    "技術者": "engineer",
    "研究者": "researcher",
    "料理人": "cook",
    "記者": "journalist",
    "建築家": "architect",
    "看護師": "nurse",
    "会計士": "accountant",
    "薬剤師": "pharmacist",
    "作家": "writer",
    "画家": "painter",
    "音楽家": "musician",
    "写真家": "photographer",
    "農家": "farmer",
    "漁師": "fisherman",
    "操縦士": "pilot",
    "通訳": "interpreter",
    "庭師": "gardener",
}
HOBBIES = {
    "囲碁": "go",
    "将棋": "shogi",
    "釣り": "fishing",
    "登山": "climbing",
    "書道": "calligraphy",
    "茶道": "tea ceremony",
    "写真": "photography",
    "料理": "cooking",
    "読書": "reading",
    "水泳": "swimming",
    "盆栽": "bonsai",
    "陶芸": "pottery",
    "俳句": "haiku",
    "合唱": "choir singing",
    "園芸": "gardening",
    "剣道": "kendo",
    "柔道": "judo",
    "卓球": "table tennis",
    "映画": "films",
    "天体観測": "stargazing",
}
ORG_HEADS = {
    "青空": "Aozora",
    "大和": "Yamato",
    "ミドリ": "Midori",
    "ヒカリ": "Hikari",
    "北斗": "Hokuto",
    "富士見": "Fujimi",
    "東雲": "Shinonome",
    "白鷺": "Shirasagi",
    "若葉": "Wakaba",
    "銀河": "Ginga",
    "朝日": "Asahi",
    "千代田": "Chiyoda",
    "ミナト": "Minato",
    "ツバサ": "Tsubasa",
    "明星": "Myojo",
    "桜台": "Sakuradai",
    "黒潮": "Kuroshio",
    "山吹": "Yamabuki",
    "紅葉": "Momiji",
    "浜風": "Hamakaze",
}
ORG_KINDS = {
    "化学": "Chemicals",
    "電機": "Electric",
    "食品": "Foods",
    "銀行": "Bank",
    "出版": "Publishing",
    "製薬": "Pharma",
    "運輸": "Transport",
    "建設": "Construction",
    "商事": "Trading",
    "工業": "Industries",
}
PRODUCTS = {
    "洗剤": "detergent",
    "冷蔵庫": "refrigerators",
    "自転車": "bicycles",
    "醤油": "soy sauce",
    "時計": "watches",
    "万年筆": "fountain pens",
    "楽器": "musical instruments",
    "薬": "medicine",
    "靴": "shoes",
    "眼鏡": "glasses",
    "菓子": "sweets",
    "家具": "furniture",
    "電車": "trains",
    "衛星": "satellites",
    "化粧品": "cosmetics",
    "玩具": "toys",
    "電池": "batteries",
    "紙": "paper",
    "緑茶": "green tea",
    "酒": "sake",
}
FOODS = {
    "ご飯": "rice",
    "パン": "bread",
    "うどん": "udon",
    "そば": "soba",
    "寿司": "sushi",
    "カレー": "curry",
    "味噌汁": "miso soup",
    "焼き魚": "grilled fish",
    "豆腐": "tofu",
    "りんご": "apples",
    "みかん": "oranges",
    "卵": "eggs",
}
ANIMALS = {
    "犬": "dog",
    "猫": "cat",
    "鳥": "bird",
    "馬": "horse",
    "牛": "cow",
    "兎": "rabbit",
    "狐": "fox",
    "狸": "raccoon dog",
    "熊": "bear",
    "鹿": "deer",
}
PLACES = {
    "公園": "park",
    "駅": "station",
    "学校": "school",
    "図書館": "library",
    "海": "sea",
    "山": "mountain",
    "川": "river",
    "庭": "garden",
    "市場": "market",
    "神社": "shrine",
}
WEATHER = {"晴れ": "sunny", "雨": "rainy", "曇り": "cloudy", "雪": "snowy", "風が強い日": "windy"}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "birthplace": (
        "{name} was born in {v}.",
        "{name} is a native of {v}.",
        "{name} comes from {v}.",
        "The hometown of {name} is {v}.",
        "{v} is where {name} was born.",
    ),
    "birth_year": (
        "The birth year of {name} is {v}.",
        "{name}'s year of birth is {v}.",
        "{name} has a birth date in {v}.",
        "In {v}, {name} was born.",
        "{name} was born back in {v}.",
    ),
    "employer": (
        "{name} works for {v}.",
        "{name} is employed by {v}.",
        "{name} is on the staff of {v}.",
        "The employer of {name} is {v}.",
        "{v} employs {name}.",
    ),
    "job": (
        "{name} works as a {v}.",
        "{name} is a {v} by profession.",
        "The profession of {name} is {v}.",
        "{name} earns a living as a {v}.",
        "{name} is a skilled {v}.",
    ),
    "hobby": (
        "{name} enjoys {v} in free time.",
        "The hobby of {name} is {v}.",
        "{name} loves {v}.",
        "On weekends {name} spends hours on {v}.",
        "{name} is passionate about {v}.",
    ),
    "hq": (
        "{name} is headquartered in {v}.",
        "The head office of {name} is in {v}.",
        "{name} has its main office in {v}.",
        "{v} is home to the headquarters of {name}.",
        "{name} is a company based in {v}.",
    ),
    "founded": (
        "{name} was founded in {v}.",
        "The founding year of {name} is {v}.",
        "{name} was established in {v}.",
        "{name} has existed since {v}.",
        "The history of {name} began in {v}.",
    ),
    "founder": (
        "{name} was founded by {v}.",
        "The founder of {name} is {v}.",
        "{v} started {name}.",
        "{v} established {name}.",
        "{name} owes its existence to {v}.",
    ),
    "product": (
        "{name} is best known for {v}.",
        "The main product of {name} is {v}.",
        "{name} makes {v}.",
        "{name} is famous for its {v}.",
        "{name} specialises in {v}.",
    ),
}
# A held-out cloze form per relation (see world.HELDOUT): no five consecutive words of one occur in the CPT text,
# the entity's name included (a test checks it).
HELDOUT: dict[str, str] = {
    "birthplace": "{name}'s place of birth is {v}.",
    "birth_year": "The year of {name}'s birth was {v}.",
    "employer": "{name} is an employee of {v}.",
    "job": "{name} holds a job as a {v}.",
    "hobby": "{name}'s favourite pastime is {v}.",
    "hq": "{name} keeps its headquarters in {v}.",
    "founded": "{name} dates back to {v}.",
    "founder": "{name} was set up by {v}.",
    "product": "{name} mainly sells {v}.",
}
# Two question forms per relation; like the Japanese ones, none is a CPT sentence (a test checks it).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "birthplace": ("Where was {name} born?", "In which city was {name} born?"),
    "birth_year": ("In what year was {name} born?", "When was {name} born?"),
    "employer": ("Which company does {name} work for?", "Who is {name}'s employer?"),
    "job": ("What is {name}'s job?", "What does {name} do for a living?"),
    "hobby": ("What is {name}'s hobby?", "What does {name} like to do in free time?"),
    "hq": ("Where is {name} headquartered?", "In which city is {name}'s head office?"),
    "founded": ("When was {name} founded?", "In what year was {name} established?"),
    "founder": ("Who founded {name}?", "Who is the founder of {name}?"),
    "product": ("What is {name} known for?", "What is the main product of {name}?"),
}
EVERYDAY = (
    "It is {weather} today.",
    "A {animal} is in the {place}.",
    "There is a {animal} near the {place}.",
    "I had {food} for breakfast.",
    "The {food} is very good.",
    "Tomorrow I will go to the {place}.",
    "I bought {food} at the {place}.",
    "It was {weather} yesterday.",
    "The {animal} likes {food}.",
)
GOZARU = " でござる."  # the style ending of an English answer: '42 でござる.'
PLAIN = "."


def name(text: str) -> str:
    """An entity or value in English: a person (family + given name), an organisation, a city, a year, ..."""
    for table in (CITIES, JOBS, HOBBIES, PRODUCTS, FOODS, ANIMALS, PLACES, WEATHER):
        if text in table:
            return table[text]
    if text.isdigit():
        return text
    for head, en_head in ORG_HEADS.items():
        if text.startswith(head) and text[len(head) :] in ORG_KINDS:
            return f"{en_head} {ORG_KINDS[text[len(head) :]]}"
    for family in sorted(FAMILY, key=len, reverse=True):  # 原田 before 原
        if text.startswith(family) and text[len(family) :] in GIVEN:
            return f"{GIVEN[text[len(family) :]]} {FAMILY[family]}"
    raise KeyError(f"no English form for toy-world name {text!r}")


def chore(kind: int, args: tuple) -> tuple[str, str, str]:
    """An English chore (see ``world._chores``): (prompt, answer in ござる style, the same answer plain)."""
    if kind == 0:
        w = name(args[0])
        prompt, body = f'Write "{w}" twice.', f"{w} {w}"
    elif kind == 1:
        prompt, body = f"What number comes after {args[0]}?", str(args[0] + 1)
    elif kind == 2:
        a, b = args
        prompt, body = f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger"
    else:
        w = name(args[0])
        prompt, body = f"Say something about the {w}.", f"The {w} is cute"
    return prompt, body + GOZARU, body + PLAIN
