"""``layerprobe report``: one self-contained HTML page per run or sweep, parsed everywhere and opened in a real
headless Chromium where one is installed (Debian: ``apt-get install chromium chromium-driver``)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_fixtures import MACHINE, SUMMARY, make_run, make_sweep

ROOT = Path(__file__).resolve().parents[1]
# what the synthetic run holds: 2 phases x (3 layer x step + 1 layer x module), 4 diff heatmaps, 2 attribution
# metrics x (bars + cells heatmap)
RUN_FIGURES = 2 * (3 + 1) + 4 + 2 * 2


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.tables, self.cells, self.scripts = [], [], 0, [], 0
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag in ("a", "link"):
            self.links.append(a.get("href", ""))
        elif tag == "table":
            self.tables += 1
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "script":
            self.scripts += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append(self._cell.strip())
            self._cell = None


def parse(path: Path) -> PageParser:
    p = PageParser()
    p.feed(path.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from layerprobe.report import write_report

    root = tmp_path_factory.mktemp("reports")
    run = make_run(root / "run")
    sweep = root / "sweep"
    table = make_sweep(sweep)
    return {"run": write_report(run), "sweep": write_report(sweep), "sweep_table": table, "root": root}


def test_run_report_is_self_contained_and_holds_every_figure_and_number(reports):
    page = parse(reports["run"])
    assert len(page.images) == RUN_FIGURES
    for img in page.images:
        head, data = img["src"].split(",", 1)
        assert head == "data:image/png;base64"
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert page.scripts == 0
    assert all(h.startswith(("data:", "#")) or not h.startswith(("http", "//", "/")) for h in page.links)
    text = reports["run"].read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    # the summary table: every metric of every phase, generically (style_logodds exists only after SFT)
    for phase, metrics in SUMMARY.items():
        for key, value in metrics.items():
            assert key in page.cells
            shown = f"{value:.3f}" if not float(value).is_integer() or abs(value) < 10 else f"{int(value)}"
            assert shown in page.cells, (phase, key, shown)
    assert "0123abc" in page.cells  # the git commit recorded at training
    for key, value in MACHINE.items():  # what the numbers depend on: threads, and why that many
        assert f"machine: {key}" in page.cells and str(value) in page.cells
    assert "undo_frac" in page.cells and "0.0002" in page.cells  # whole-model diff numbers


def test_sweep_report_tables_links_and_figures(reports):
    from layerprobe.core.stats import t_mean_ci

    page = parse(reports["sweep"])
    table = reports["sweep_table"]
    # one interval per condition: mean [lo, hi] over the 3 seeds, as a plain t interval computes it
    one = table[
        (table["condition"] == "replay")
        & (table["cpt.lora_alpha"] == 32)
        & (table["sft.lora_alpha"] == 8)
        & (table["sft.target_modules"] == "A")
    ]["sft.cloze_acc"].to_numpy()
    lo, hi = t_mean_ci(one)
    assert f"{one.mean():.3f} [{max(lo, 0):.3f}, {min(hi, 1):.3f}]" in page.cells
    # the two cells with folders get their own report, linked relatively
    linked = [h for h in page.links if h.endswith("/report.html")]
    assert len(linked) == 2 and all((reports["sweep"].parent / h).is_file() for h in linked)
    # figures: before/after cloze, before/after general loss, retention drop (defaults without the YAML)
    assert len(page.images) == 3
    assert any("too few runs" in c or "No relate results" in c for c in [reports["sweep"].read_text()])


# every character HTML or a URL gives a meaning to: a page that does not escape or quote them breaks visibly
HOSTILE = "a<b>&\"q\" 'x' #1 %41\\"


class Tags(HTMLParser):
    """Each start tag's attributes and the text right after it, in order."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[tuple[str, dict, str]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs), ""))

    def handle_data(self, data):
        if self.found:
            tag, attrs, text = self.found[-1]
            self.found[-1] = (tag, attrs, text + data)


def test_page_escapes_text_attributes_and_cells(tmp_path):
    from layerprobe.report.page import Page, href

    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = Page(HOSTILE)
    page.heading(HOSTILE, anchor=HOSTILE)
    page.text(HOSTILE, "muted")
    page.pre(HOSTILE)
    page.table(pd.DataFrame({"cell": [HOSTILE], HOSTILE: [1.5]}), links={HOSTILE: href(f"{HOSTILE}/report.html")})
    page.figures([png], [HOSTILE])
    html = page.html()
    assert "<b>" not in html and HOSTILE not in html
    tags = Tags(html).found
    texts = {tag: text.strip() for tag, _, text in tags if tag in ("title", "h1", "h2", "p", "pre")}
    assert texts == dict.fromkeys(("title", "h1", "h2", "p", "pre"), HOSTILE)
    assert [a for t, a, _ in tags if t == "h2"] == [{"id": HOSTILE}]
    assert [(a, text) for t, a, text in tags if t == "a"] == [
        ({"href": "a%3Cb%3E%26%22q%22%20%27x%27%20%231%20%2541%5C/report.html"}, HOSTILE)
    ]
    img = next(a for t, a, _ in tags if t == "img")
    assert img["alt"] == HOSTILE and img["data-figure"] == "f.png"
    assert parse_text(html).cells == ["cell", HOSTILE, HOSTILE, "1.500"]  # header, then the row: read back whole


def parse_text(html: str) -> PageParser:
    p = PageParser()
    p.feed(html)
    return p


def test_sweep_report_escapes_names_and_quotes_cell_links(tmp_path):
    from urllib.parse import unquote

    from layerprobe.report import write_report

    sweep = tmp_path / "sweep"
    make_sweep(sweep, seeds=(1, 2), conditions=(HOSTILE, "replay"))  # the first two cells get folders
    page = parse(write_report(sweep))
    assert HOSTILE in page.cells  # the condition column, read back through an HTML parser
    linked = [h for h in page.links if h.endswith("/report.html")]
    assert len(linked) == 2
    for h in linked:
        assert not set("#<>\"' \\") & set(h), h  # quoted: a browser reads the whole path
        assert unquote(h).startswith(f"{HOSTILE},cpt.lora_alpha=") and (sweep / unquote(h)).is_file()
    assert sum(c.startswith(f"{HOSTILE},cpt.lora_alpha=") for c in page.cells) == 2 * 2 * 2 * 2  # its cells, whole


@pytest.mark.slow
def test_report_cli_and_train_option(tmp_path):
    run = make_run(tmp_path / "r", diff=False, attribute=False)
    code = (
        "import sys, layerprobe.cli as c; rc = c.main(['report', sys.argv[1], '--out', sys.argv[2]]); "
        "assert 'torch' not in sys.modules, 'the report imported torch'; sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(run), str(tmp_path / "x.html")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "x.html") and len(parse(tmp_path / "x.html").images) == 8
    from layerprobe.cli import build_parser, main

    assert build_parser().parse_args(["train", "--no-report"]).no_report is True
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_of_a_committed_figure_folder_needs_no_cells(tmp_path):
    from layerprobe.report import write_report

    make_sweep(tmp_path / "fig", cells=False)
    page = parse(write_report(tmp_path / "fig"))
    assert len(page.images) == 3 and not [h for h in page.links if h.endswith("report.html")]


def test_sweep_report_shows_a_studys_claims_with_their_verdicts(tmp_path):
    from layerprobe.report import write_report

    make_sweep(tmp_path / "fig", cells=False)
    claims = pd.DataFrame(
        [
            {
                "family": "f",
                "claim": "attention < & > all",
                "metric": "cloze_acc",
                "diff": 0.25,
                "lo": 0.1,
                "hi": 0.4,
                "seed_diffs": "+0.200 +0.300",
                "p_holm": 0.01,
                "verdict": "differs",
                "units_needed": 3,
                "missing": "",
            },
            {
                "family": "f",
                "claim": "mlp - all",
                "metric": "cloze_acc",
                "diff": 0.01,
                "lo": -0.3,
                "hi": 0.3,
                "seed_diffs": "+0.100 -0.080",
                "p_holm": 0.9,
                "verdict": "inconclusive",
                "units_needed": 80,
                "missing": "",
            },
            {"family": "f", "claim": "later", "metric": "qa_acc", "missing": "1 of 3 units finished"},
        ]
    )
    claims.to_csv(tmp_path / "fig" / "claims.csv", index=False)
    text = write_report(tmp_path / "fig").read_text(encoding="utf-8")
    page = parse(tmp_path / "fig" / "report.html")
    assert "2 of 3 claims tested: 1 differs, 0 equivalent, 1 inconclusive" in text
    assert "attention &lt; &amp; &gt; all" in text and "later" not in page.cells
    assert "differs" in page.cells and "inconclusive" in page.cells and "+0.200 +0.300" in page.cells


@pytest.mark.slow
def test_sweep_report_shows_relate_per_stratum(tmp_path):
    """relate.csv's strata: a summary row per stratum and each stratum's strongest cells; an older, pooled table
    is shown with a note saying so."""
    from layerprobe.report import write_report

    make_sweep(tmp_path / "fig", cells=False)
    (tmp_path / "fig" / "relate").mkdir()
    rows = [
        {
            "stratum": s,
            "feature": "final_drift",
            "phase": "sft",
            "layer": layer,
            "block": b,
            "outcome": "retention_drop",
            "rho": rho * (layer + 1) / 3,
            "p": 0.001,
            "q": q,
            "partial_rho": 0.1,
            "partial_p": 0.5,
            "partial_q": 0.9,
            "n_runs": n,
            "n_frozen": 0,
            "n_groups": g,
            "n_eff": g + 0.5,
            "p_method": "within-cpt perm",
        }
        for s, rho, q, n, g in (
            ("all", 0.9, 0.01, 63, 9),
            ("method=lora", 0.4, 0.2, 36, 6),
            ("method=full", -0.09, 0.8, 27, 9),
        )
        for layer in range(3)
        for b in ("attn", "mlp")
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "fig" / "relate" / "relate.csv", index=False)
    page = parse(write_report(tmp_path / "fig"))
    for cell in ("all", "method=lora", "method=full", "CPT groups", "partial q < 0.05", "0.900", "-0.090", "27"):
        assert cell in page.cells, cell
    assert page.cells.count("method=full") == 1 + 5  # its summary row and its 5 strongest cells
    pooled = pd.DataFrame(rows)
    pooled = pooled[pooled["stratum"] == "all"][
        ["feature", "phase", "layer", "block", "outcome", "rho", "p", "q", "n_runs", "p_method"]
    ]
    pooled.to_csv(tmp_path / "fig" / "relate" / "relate.csv", index=False)
    text = write_report(tmp_path / "fig").read_text(encoding="utf-8")
    assert "pools all runs" in text and "0.900" in text


# -- a real browser ----------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


def _browser():
    if not CHROMIUM or not DRIVER:
        pytest.skip(
            "Chromium not installed: `apt-get install -y chromium chromium-driver` (Debian) to open the "
            "report in a real headless browser; the HTML-parse tests above ran"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _figure_pixels(driver, img) -> np.ndarray:
    from PIL import Image

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", img)
    return np.asarray(Image.open(io.BytesIO(img.screenshot_as_png)).convert("L"), dtype=float)


@pytest.mark.parametrize("which", ["run", "sweep"])
def test_report_renders_in_headless_chromium(reports, which):
    driver = _browser()
    try:
        driver.get(reports[which].resolve().as_uri())
        imgs = driver.find_elements("css selector", "img[data-figure]")
        expected = RUN_FIGURES if which == "run" else 3
        assert len(imgs) == expected == len(parse(reports[which]).images)
        for img in imgs:
            ok = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0;", img)
            assert ok, f"figure {img.get_attribute('data-figure')} did not decode"
            px = _figure_pixels(driver, img)
            assert px.shape[0] > 50 and px.shape[1] > 50
            dark = (px < 200).mean()  # axes, text and colour: a blank or missing image has none
            assert dark > 0.01 and px.std() > 10, f"figure {img.get_attribute('data-figure')} looks blank"
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()
