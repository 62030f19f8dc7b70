"""Loaders for the real data in ``shared/data``; dolly's outputs through the rule-based ござる rewrite of Study B
(:mod:`layerprobe.sources.gozaru`).

Every loader takes its file or folder as an argument; :func:`default_data_dir` finds the shared folder
(``$LAYERPROBE_SHARED_DATA``, else ``<repo>/../shared/data``) for tests and experiments.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from layerprobe.sources.data import json_lines
from layerprobe.sources.gozaru import gozaru_rewrite

DATA_ENV = "LAYERPROBE_SHARED_DATA"


def default_data_dir() -> Path:
    """``$LAYERPROBE_SHARED_DATA`` or ``<repo>/../shared/data``; FileNotFoundError when absent."""
    env = os.environ.get(DATA_ENV)
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"no shared data folder at {path}; set {DATA_ENV}=/path/to/shared/data "
            "(the folder with dolly-15k-ja.jsonl, aozora/, jcommonsenseqa/, fictional-news-ja/)"
        )
    return path


def _file(path: str | os.PathLike, default_name: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise FileNotFoundError(f"expected {default_name} (a file, or the folder holding it), found nothing at {path}")
    return path


def _sample(rows: list, n: int | None, seed: int | None) -> list:
    if n is None:
        return rows
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"expected n to be a count >= 0 or None, got {n!r}")
    if seed is None:
        return rows[:n]
    return random.Random(seed).sample(rows, min(n, len(rows)))


# --------------------------------------------------------------------------------------------- dolly / ござる


def load_dolly_gozaru(
    path: str | os.PathLike, n: int | None = None, seed: int | None = 3407, rewrite: bool = True
) -> list[dict]:
    """Rows ``{"instruction", "input", "output"}`` of dolly-15k-ja with every output in ござる style.

    ``path``: ``dolly-15k-ja.jsonl`` or its folder. ``n`` rows drawn at random with ``seed`` (``seed=None``: the
    first ``n``). The rewrite (:func:`gozaru_rewrite`) is idempotent, so the hub's already-rewritten
    ``databricks-dolly-15k-ja-gozaru`` exported as JSON lines loads the same way. Plain instruction records,
    not chat messages: the SFT stage formats them.
    """
    rows = json_lines(_file(path, "dolly-15k-ja.jsonl"))
    for i, r in enumerate(rows):
        if not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise ValueError(f"expected string fields instruction and output in every row, row {i} has {sorted(r)}")
    out = [
        {
            "instruction": r["instruction"],
            "input": r.get("input") or "",
            "output": gozaru_rewrite(r["output"]) if rewrite else r["output"],
        }
        for r in rows
    ]
    return _sample(out, n, seed)


# --------------------------------------------------------------------------------------------- news, Soseki

_MD_DROP = re.compile(r"^\s*(#|(?:-{3,}|\*{3,}|_{3,})\s*$)")
_MD_INLINE = [
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # images -> alt text
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # links -> text
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<![*0-9A-Za-z])\*(?!\s)(.+?)(?<!\s)\*(?![*0-9A-Za-z])"), r"\1"),  # *emphasis*, not 2*3*4
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"^\s*(?:>\s*)+"), ""),  # quotes
    (re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+"), ""),  # list markers
]


def strip_markdown(line: str) -> str:
    """One line of markdown as plain text (headings and rules become '')."""
    if _MD_DROP.match(line):
        return ""
    for pattern, repl in _MD_INLINE:
        line = pattern.sub(repl, line)
    return line.strip()


def load_news_text(path: str | os.PathLike, topics: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Articles of fictional-news-ja: one per non-empty line of ``<path>/<topic>.md``, markdown stripped.

    ``topics``: file stems to read (default: all, in name order), e.g. ``["politics", "science"]``.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"expected the fictional-news-ja folder (one <topic>.md per topic), got {path}")
    files = {f.stem: f for f in sorted(path.glob("*.md")) if f.stem.lower() != "readme"}
    if not files:
        raise FileNotFoundError(f"expected <topic>.md files in {path}, found none")
    unknown = sorted(set(topics or ()) - set(files))
    if unknown:
        raise ValueError(f"unknown topics {unknown} in {path}; expected some of {sorted(files)}")
    texts = []
    for name in topics or list(files):
        for line in files[name].read_text(encoding="utf-8").splitlines():
            text = strip_markdown(line)
            if text:
                texts.append(text)
    return texts


_RUBY_BAR = re.compile(r"｜([^《｜\n]+)《[^》\n]*》")
_RUBY = re.compile(r"《[^》\n]*》")
_NOTE = re.compile(r"［＃[^］\n]*］")
_HEADER_RULE = re.compile(r"^-{10,}\s*$", re.M)
_FOOTER = re.compile(r"^\s*底本[：:]", re.M)


def clean_aozora(text: str) -> str:
    """An Aozora Bunko text without header (title to the symbol legend), footer (底本...), ruby and notes."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    rules = list(_HEADER_RULE.finditer(text[:5000]))
    if len(rules) >= 2:
        text = text[rules[1].end() :]
    footer = _FOOTER.search(text)
    if footer:
        text = text[: footer.start()]
    text = _NOTE.sub("", _RUBY.sub("", _RUBY_BAR.sub(r"\1", text))).replace("｜", "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def load_soseki(path: str | os.PathLike, files: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """The cleaned Aozora texts in ``path`` (``*.txt``, name order), one string per book.

    ``files``: the file names to read (default all), e.g. ``["bocchan.txt"]``. Shift-JIS files (as Aozora
    ships them) are read too.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"expected a folder of Aozora Bunko .txt files (shared/data/aozora), got {path}")
    names = list(files) if files else [f.name for f in sorted(path.glob("*.txt"))]
    if not names:
        raise FileNotFoundError(f"expected *.txt Aozora texts in {path}, found none")
    texts = []
    for name in names:
        raw = (path / name).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp932")
        texts.append(clean_aozora(text))
    return texts


# --------------------------------------------------------------------------------------------- JCommonsenseQA


def jcommonsenseqa_file(path: str | os.PathLike, split: str = "valid") -> Path:
    """The JSON-lines file of ``path``: the file itself, or the one ``*<split>*.json(l)`` in the folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = sorted(path.glob(f"*{split}*.json")) + sorted(path.glob(f"*{split}*.jsonl"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"expected one *{split}*.json file in {path}, found {[f.name for f in found]}; pass the file itself"
            )
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no JCommonsenseQA file or folder at {path}")
    return path


def load_jcommonsenseqa(
    path: str | os.PathLike, n: int | None = None, split: str = "valid", seed: int | None = None
) -> list[dict]:
    """JCommonsenseQA rows ``{"question", "choice0".."choice4", "label", "q_id"}``, checked.

    ``path``: a JSON-lines file, or the folder holding ``*<split>*.json``. ``n``: the first ``n`` rows
    (``seed``: ``n`` drawn at random instead).
    """
    path = jcommonsenseqa_file(path, split)
    rows = json_lines(path)
    for i, r in enumerate(rows):
        k = sum(1 for key in r if re.fullmatch(r"choice\d+", key))
        if "question" not in r or k < 2 or not isinstance(r.get("label"), int) or not 0 <= r["label"] < k:
            raise ValueError(
                f"expected question, choice0..choiceN and an int label in every row of {path}, row {i} is {r}"
            )
    return _sample(rows, n, seed)
