"""The report page's building blocks against what a reader sees: each cell's text (by a plain reference of the
rules in :func:`fmt`'s docstring), which columns align as text, links only on the first column, figures' types and
captions, and a page written whole."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from layerprobe.report.page import Page, fmt


def fmt_reference(value, digits=3):
    """None/NaN -> n/a; bools as words; ints, and whole floats of 10 or more, without decimals; other floats with
    ``digits`` decimals; anything else as its text."""
    if value is None:
        return "n/a"
    if type(value) is bool:
        return "True" if value else "False"
    if type(value) is int:
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value == int(value) and (value >= 10 or value <= -10):
            return str(int(value))
        return ("%." + str(digits) + "f") % value
    return str(value)


CELLS = [None, math.nan, True, False, 0, 7, -3, 10.0, -10.0, 9.0, -9.0, 12345.0, 2.5, 0.1234, -0.0005, 1e-9, "x", "10"]


@pytest.mark.parametrize("value", CELLS, ids=[repr(v) for v in CELLS])
@pytest.mark.parametrize("digits", [3, 1])
def test_each_cell_reads_as_the_reference(value, digits):
    expected = fmt_reference(value, digits)
    assert fmt(value, digits) == expected
    if digits == 3:
        assert fmt(value) == expected  # three decimals unless told


class Cells(HTMLParser):
    """Rows of (tag, class, text, href) for th and td cells."""

    def __init__(self, html):
        super().__init__()
        self.rows, self.cell, self.href = [], None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self.cell = [tag, a.get("class"), "", None]
            self.rows[-1].append(self.cell)
        elif tag == "a" and self.cell is not None:
            self.cell[3] = a["href"]

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self.rows[-1][-1] = tuple(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[2] += data


def test_table_aligns_text_columns_left_and_links_only_the_first_column():
    df = pd.DataFrame({"run": ["a", "b"], "n": [3, 12], "score": [0.25, np.nan], "seed": [1, 2]})
    page = Page("t")
    page.table(df, digits=2, text_columns=("seed",), links={"a": "a/report.html", "0.25": "never", "3": "never"})
    assert Cells(page.html()).rows == [
        [("th", "t", "run", None), ("th", None, "n", None), ("th", None, "score", None), ("th", "t", "seed", None)],
        [
            ("td", "t", "a", "a/report.html"),
            ("td", None, "3", None),
            ("td", None, "0.25", None),
            ("td", "t", "1", None),
        ],
        [("td", "t", "b", None), ("td", None, "12", None), ("td", None, "n/a", None), ("td", "t", "2", None)],
    ]


def test_table_with_its_index_shows_the_index_as_the_first_column():
    df = pd.DataFrame({"v": [1.5]}, index=pd.Index(["row"], name="name"))
    page = Page("t")
    page.table(df, index=True)
    assert [[c[2] for c in r] for r in Cells(page.html()).rows] == [["name", "v"], ["row", "1.500"]]
    page = Page("t")
    page.table(df)
    assert [[c[2] for c in r] for r in Cells(page.html()).rows] == [["v"], ["1.500"]]


class Figures(HTMLParser):
    def __init__(self, html):
        super().__init__()
        self.imgs, self.captions, self.in_caption = [], [], False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        self.in_caption = tag == "figcaption"
        if self.in_caption:
            self.captions.append("")

    def handle_endtag(self, tag):
        self.in_caption = False

    def handle_data(self, data):
        if self.in_caption:
            self.captions[-1] += data


def test_figures_are_embedded_with_their_type_and_captions(tmp_path):
    import base64

    png, svg = tmp_path / "one.png", tmp_path / "two.svg"
    png.write_bytes(b"\x89PNG\r\n\x1a\nxx")
    svg.write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    page = Page("t")
    page.figures([])
    assert page.n_figures == 0 and page.parts == []
    page.figures([png, svg])
    page.figures([png], ["given caption"])
    assert page.n_figures == 3
    found = Figures(page.html())
    assert [i["src"] for i in found.imgs] == [
        "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode(),
        "data:image/svg+xml;base64," + base64.b64encode(svg.read_bytes()).decode(),
        "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode(),
    ]
    assert [i["alt"] for i in found.imgs] == found.captions == ["one", "two", "given caption"]
    assert [i["data-figure"] for i in found.imgs] == ["one.png", "two.svg", "one.png"]


def test_headings_notes_and_raw_fragments_in_order(tmp_path):
    page = Page("Title")
    page.heading("Sub", level=3)
    page.heading("Anchored", anchor="here")
    page.note("careful")
    page.text("plain")
    page.raw("<hr>")
    body = page.html().split("<body>")[1]
    assert body == (
        '<h1>Title</h1><h3>Sub</h3>\n<h2 id="here">Anchored</h2>\n<p class="note">careful</p>\n<p>plain</p>\n'
        "<hr></body></html>\n"
    )


def test_page_head_and_an_atomic_write(tmp_path):
    page = Page("T")
    html = page.html()
    assert html.startswith("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>")
    assert "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"" in html
    out = page.write(tmp_path / "deep" / "er" / "report.html")
    assert out == tmp_path / "deep" / "er" / "report.html"
    assert out.read_text(encoding="utf-8") == html
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no .tmp left


def test_cell_links_keep_the_characters_a_path_allows_and_quote_the_rest():
    from layerprobe.report.page import href

    cell = "cpt.lora_alpha=8,sft.lr=1e-4+x:y@z/report.html"  # a sweep cell's folder name, as the sweep writes it
    assert href(cell) == cell
    assert href("a b#c%d?e\"f'g/report.html") == "a%20b%23c%25d%3Fe%22f%27g/report.html"


def test_a_figure_of_another_suffix_is_embedded_as_png(tmp_path):
    shot = tmp_path / "shot.PNG"
    shot.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = Page("t")
    page.figures([shot])
    assert Figures(page.html()).imgs[0]["src"].startswith("data:image/png;base64,")


class StrayText(HTMLParser):
    """Text a reader would see outside any element meant to hold text (a cell, a caption, a heading, ...), and the
    class of every element that carries one."""

    HOLDS_TEXT = frozenset({"th", "td", "a", "figcaption", "h1", "h2", "h3", "p", "pre", "title", "style", "span"})

    def __init__(self, html):
        super().__init__()
        self.stack: list[str] = []
        self.stray: list[str] = []
        self.classes: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "link", "img", "br"):
            self.stack.append(tag)
        self.classes += [v for k, v in attrs if k == "class"]

    def handle_endtag(self, tag):
        if tag in self.stack:
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(tag) :]

    def handle_data(self, data):
        if data.strip() and not (self.stack and self.stack[-1] in self.HOLDS_TEXT):
            self.stray.append(data)


def test_a_page_of_tables_and_figures_shows_no_text_outside_its_cells_and_captions(tmp_path):
    png = tmp_path / "one.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nxx")
    page = Page("t")
    page.table(pd.DataFrame({"a": ["x", "y"], "b": [1.5, 2.5]}), links={"x": "x/report.html"})
    page.figures([png, png])
    found = StrayText(page.html())
    assert found.stray == []
    assert "figs" in found.classes  # the class the page's style lays the figures out by (case-sensitive)
