"""One self-contained HTML page: sections of headings, prose, tables and figures embedded as base64.

No script, no external file, no network at view time: the page's Content-Security-Policy forbids loading
anything but its own inline style and ``data:`` images, so a reference that slipped in would show as a console
error in the browser test instead of silently fetching.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from urllib.parse import quote

import pandas as pd

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MIME = {".png": "image/png", ".svg": "image/svg+xml"}
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1180px;padding:0 18px 40px;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.5em;margin:.8em 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
h3{font-size:1.0em;margin:1.1em 0 .3em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0 1em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f6}
td.t,th.t{text-align:left}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
figure{margin:0;border:1px solid #eee;padding:6px;background:#fff}figure img{max-width:100%;height:auto}
figcaption{font-size:.8em;color:#555}
.note{background:#fff8e1;border-left:4px solid #f0c000;padding:4px 10px;font-size:.9em}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:.8em;max-height:420px}
.muted{color:#666;font-size:.85em}
"""


def esc(value) -> str:
    """Text or an attribute value made safe for HTML: ``& < > " '`` become entities."""
    return html.escape(str(value), quote=True)


def attr(name: str, value) -> str:
    """`` name="value"`` with the value escaped (a quoted attribute, whatever characters the value holds)."""
    return f' {name}="{esc(value)}"'


def href(path: str) -> str:
    """A relative link to a file path, URL-quoted so that ``#``, ``%``, ``?``, quotes or spaces in a folder name
    stay part of the path (``/``, ``,``, ``=``, ``+``, ``:`` and ``@`` are valid in a path and kept as they are)."""
    return quote(path, safe="/,=+:@")


def fmt(value, digits: int = 3) -> str:
    """A table cell: integers as such, other numbers with ``digits`` decimals, missing as n/a."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 10):
        return f"{int(value)}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class Page:
    """A report page built section by section; :meth:`html` returns the whole document."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.n_figures = 0

    def heading(self, text: str, level: int = 2, anchor: str = "") -> None:
        self.parts.append(f"<h{level}{attr('id', anchor) if anchor else ''}>{esc(text)}</h{level}>")

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f"<p{attr('class', cls) if cls else ''}>{esc(text)}</p>")

    def note(self, text: str) -> None:
        self.text(text, "note")

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)

    def pre(self, text: str) -> None:
        self.parts.append(f"<pre>{esc(text)}</pre>")

    def table(
        self,
        df: pd.DataFrame,
        digits: int = 3,
        text_columns: tuple[str, ...] = (),
        index: bool = False,
        links: dict[str, str] | None = None,
    ) -> None:
        """A DataFrame as an HTML table; ``links`` maps a first-column value to a relative href."""
        if index:
            df = df.reset_index()
        cols = list(df.columns)
        is_text = {c: c in text_columns or not pd.api.types.is_numeric_dtype(df[c]) for c in cols}
        head = "".join(f"<th class='t'>{esc(c)}</th>" if is_text[c] else f"<th>{esc(c)}</th>" for c in cols)
        rows = []
        for rec in df.itertuples(index=False):
            cells = []
            for c, v in zip(cols, rec):
                shown = esc(fmt(v, digits))
                if links and c == cols[0] and str(v) in links:
                    shown = f"<a{attr('href', links[str(v)])}>{shown}</a>"
                cells.append(f"<td class='t'>{shown}</td>" if is_text[c] else f"<td>{shown}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")

    def figures(self, paths: list[Path], captions: list[str] | None = None) -> None:
        """Embed image files (PNG or SVG) side by side, each as a base64 ``data:`` URI."""
        items = []
        for i, path in enumerate(paths):
            path = Path(path)
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            caption = captions[i] if captions else path.stem
            items.append(
                f"<figure><img src='data:{MIME.get(path.suffix, 'image/png')};base64,{data}'"
                f"{attr('alt', caption)}{attr('data-figure', path.name)}><figcaption>{esc(caption)}"
                "</figcaption></figure>"
            )
            self.n_figures += 1
        if items:
            self.parts.append("<div class='figs'>" + "".join(items) + "</div>")

    def html(self) -> str:
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>"
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{esc(self.title)}</h1>" + "\n".join(self.parts) + "</body></html>\n"
        )

    def write(self, out: str | Path) -> Path:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(self.html(), encoding="utf-8")
        tmp.replace(out)
        return out
