"""The report of a sweep: results and interval tables, paired comparisons, relate's findings (with its notes), the
study figures, and a link to each cell's own report. Works from a sweep folder (cells + results.csv) or from a
committed figure folder (results.csv alone)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd

from layerprobe.core import rundir
from layerprobe.report.page import Page, href
from layerprobe.report.run import build_run_page
from layerprobe.sweep.spec import _safe

CELL_REPORT = "report.html"


def sweep_axes(table: pd.DataFrame) -> list[str]:
    """The factor columns of a results.csv: those between ``cell`` and ``seed`` (condition replaced by group)."""
    cols = list(table.columns)
    if "cell" not in cols or "seed" not in cols:
        raise ValueError(
            f"a results.csv needs the columns cell and seed (as `layerprobe sweep` writes it); got "
            f"{', '.join(cols[:8])}..."
        )
    axes = cols[cols.index("cell") + 1 : cols.index("seed")]
    return [a for a in axes if a != "condition"]


def default_panels(table: pd.DataFrame) -> list:
    """Without the sweep YAML: before/after pairs (cpt.X, sft.X) of every metric measured after SFT."""
    panels = []
    axes = set(sweep_axes(table))
    for c in table.columns:
        if (
            c.startswith("sft.")
            and c not in axes
            and not c.endswith(".n")
            and c != "sft.n_probes"
            and pd.api.types.is_numeric_dtype(table[c])
            and table[c].notna().any()
        ):
            before = "cpt." + c[4:]
            panels.append([before, c] if before in table and table[before].nunique() > 0 else c)
    return panels + (["retention_drop"] if "retention_drop" in table else [])


def _spec(folder: Path) -> tuple[list, str]:
    """The plot panels and baseline of the sweep YAML named in sweep.json, when it can still be read."""
    from layerprobe.sweep import SWEEP_JSON, load_sweep

    state = folder / SWEEP_JSON
    if state.is_file():
        source = json.loads(state.read_text()).get("source") or ""
        if source and Path(source).is_file():
            try:
                sw = load_sweep(source, out=folder)
                return sw.plot, sw.baseline
            except ValueError:
                pass
    return [], ""


def _interval_table(ci: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """ci.csv as one row per condition, one column per metric: 'mean [lo, hi]'."""

    def cell(r):
        if pd.isna(r["lo"]):
            return f"{r['mean']:.3f}"
        return f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"

    ci = ci.assign(shown=ci.apply(cell, axis=1))
    keys = [b for b in by if b in ci]
    wide = (
        ci.pivot_table(index=keys, columns="metric", values="shown", aggfunc="first", sort=False)
        if keys
        else ci.set_index("metric")[["shown"]].T
    )
    wide = wide.reset_index() if keys else wide
    methods = "; ".join(sorted(set(ci["ci"])))
    wide.columns.name = None
    return wide.astype(str), methods


def _relate(folder: Path, page: Page) -> None:
    from layerprobe.analyse.relate import relate_runs
    from layerprobe.analyse.relate_config import TABLE_FILE

    table_file = folder / "relate" / TABLE_FILE
    if table_file.is_file():
        table, notes = _read_relate_table(table_file)
        source = f"from {table_file}"
    else:
        try:
            res = relate_runs(folder)
        except (ValueError, FileNotFoundError) as e:
            page.note(f"No relate results: {e}")
            return
        table, notes, source = res.table, res.notes, "computed now over the cells' records"
    page.text(
        f"Spearman correlation of per-(layer, block) features with outcomes, per stratum of runs, {source}; "
        "partial_rho controls for the run's total SFT drift; p-values by permutations within CPT groups "
        "(or of whole groups), q-values Benjamini-Hochberg within each stratum.",
        "muted",
    )
    for note in notes:
        page.note(note)
    strata = _strata_summary(table)
    if len(strata) > 1 or "partial_q" in table:
        page.table(strata, digits=3, text_columns=("stratum",))
    _strongest(page, table, strata)


def _read_relate_table(table_file: Path) -> tuple[pd.DataFrame, list[str]]:
    """A relate.csv written before (an older one gets the stratum ``all``) and what to say about it."""
    from layerprobe.analyse.relate_config import MIN_RUNS

    notes: list[str] = []
    table = pd.read_csv(table_file)
    if "stratum" not in table:  # a table of an older relate: all runs pooled
        table.insert(0, "stratum", "all")
        notes.append(
            "this relate.csv pools all runs (written before strata, partial rho and permutations "
            "within CPT groups); rerun `layerprobe relate` for them."
        )
    alls = table[table["stratum"] == "all"]
    n = int(alls["n_runs"].max()) if len(alls) else 0
    if n < MIN_RUNS:
        notes.append(f"too few runs for a claim: {n} run(s) (fewer than {MIN_RUNS}).")
    return table, notes


def _strongest(page: Page, table: pd.DataFrame, strata: pd.DataFrame) -> None:
    """The 5 strongest correlations by |rho_tested| (an older table: |rho|) in each stratum, in ``strata``'s order."""
    by = "rho_tested" if "rho_tested" in table else "rho"  # an older relate.csv has no rho_tested
    t = table.dropna(subset=[by])
    if len(t):
        top = t.reindex(t[by].abs().sort_values(ascending=False).index).groupby("stratum", sort=False).head(5)
        top = top.sort_values(
            "stratum", key=lambda s: s.map({v: i for i, v in enumerate(strata["stratum"])}), kind="stable"
        )
        shown = [
            c
            for c in (
                "stratum",
                "feature",
                "phase",
                "layer",
                "block",
                "outcome",
                "rho",
                "rho_tested",
                "q",
                "partial_rho",
                "partial_rho_tested",
                "partial_q",
                "n_runs",
                "n_frozen",
                "n_groups",
                "n_eff",
                "p_method",
            )
            if c in top
        ]
        tested = " (the statistic each p tests: within CPT groups, or over their means)" if by != "rho" else ""
        page.text(f"The strongest 5 by |{by}| in each stratum{tested}.", "muted")
        page.table(
            top[shown].reset_index(drop=True),
            digits=3,
            text_columns=("stratum", "feature", "phase", "block", "outcome", "p_method"),
        )


def _strata_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per stratum: its runs and CPT groups, how many tests and how many pass q < 0.05."""
    rows = []
    for stratum, t in table.groupby("stratum", sort=False):
        row = {
            "stratum": stratum,
            "runs": int(t["n_runs"].max()),
            "tests": int(t["p"].notna().sum()),
            "q < 0.05": int((t["q"] < 0.05).sum()),
        }
        if "n_groups" in t:
            row["CPT groups"] = int(t["n_groups"].max())
        if "partial_q" in t:
            row["partial q < 0.05"] = int((t["partial_q"] < 0.05).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _cell_links(folder: Path, table: pd.DataFrame, write_cells: bool) -> dict[str, str]:
    """cell -> the link to its report; with ``write_cells``, a finished cell without a report gets one."""
    links = {}
    for name in table["cell"]:
        cell = folder / name
        if rundir.summary_path(cell).is_file():
            if write_cells and not (cell / CELL_REPORT).is_file():
                page_cell = build_run_page(cell, link_up=f"../{CELL_REPORT}")
                page_cell.write(cell / CELL_REPORT)
            if (cell / CELL_REPORT).is_file():
                links[name] = href(f"{name}/{CELL_REPORT}")
    return links


def _paired(page: Page, table: pd.DataFrame, ci: pd.DataFrame, axes: list[str], baseline: str, png: Path) -> None:
    """Each condition minus the baseline on the same seed and grid values: the table and its figure."""
    from layerprobe.sweep import paired_table, plot_paired

    keys = ["seed"] + [a for a in axes if a != "group"]
    metrics = list(ci["metric"].unique()) if len(ci) else []
    paired = paired_table(table, metrics, baseline, keys)
    page.heading(f"Paired comparisons with the baseline ({baseline})", anchor="paired")
    if len(paired):
        page.text(
            "condition - baseline with the seed as the unit: mean_diff over seeds with a 95 % t "
            "interval [lo, hi], the paired t-test's p, Holm's correction over the table (p_holm) and "
            "the verdict: differs, equivalent within the metric's margin (TOST), or inconclusive; "
            "units_needed = seeds for power 0.8 at the observed difference.",
            "muted",
        )
        page.table(paired, digits=3, text_columns=("condition", "metric", "verdict"))
        plot_paired(paired, png, baseline)
        if png.is_file():
            page.figures([png], ["paired differences from the baseline"])


def _claims(page: Page, folder: Path) -> None:
    """A study's claims.csv (:func:`layerprobe.analyse.paired.write_claims`): the tested claims and their forest
    plot."""
    claims = pd.read_csv(folder / "claims.csv", keep_default_na=False, na_values=[""])
    tested = claims[claims["missing"].fillna("") == ""]
    page.heading("Claims, with the seed as the unit", anchor="claims")
    counts = tested["verdict"].value_counts()
    page.text(
        f"{len(tested)} of {len(claims)} claims tested: "
        + ", ".join(f"{int(counts.get(v, 0))} {v}" for v in ("differs", "equivalent", "inconclusive"))
        + ". Paired t-test on "
        "the per-seed differences, Holm within each family, TOST against the margin; units_needed = seeds for "
        "power 0.8 at the observed difference (layerprobe.analyse.paired).",
        "muted",
    )
    page.table(
        tested[
            [
                c
                for c in ("claim", "metric", "diff", "lo", "hi", "seed_diffs", "p_holm", "verdict", "units_needed")
                if c in tested
            ]
        ],
        text_columns=("claim", "metric", "seed_diffs", "verdict"),
    )
    if (folder / "claims.png").is_file():
        page.figures([folder / "claims.png"], ["claims"])


def _results(page: Page, table: pd.DataFrame, axes: list[str], links: dict[str, str]) -> None:
    """One row per cell: its factors, seed and numeric outcomes, linked to the cell's report."""
    page.heading("Results, one row per cell", anchor="results")
    shown = ["cell", *axes, "seed"] + [
        c
        for c in table.columns
        if (c.startswith(("cpt.", "sft.")) or c in ("retention_drop", "cell_seconds"))
        and not c.endswith(".n")
        and not c.endswith("n_probes")
        and pd.api.types.is_numeric_dtype(table[c])
        and table[c].notna().any()
    ]
    page.table(table[[c for c in dict.fromkeys(shown) if c in table]], links=links, text_columns=("cell", *axes))
    if not links:
        page.text("No cell folders beside this results table: no per-cell reports to link.", "muted")


def build_sweep_page(folder: Path, write_cells: bool = True) -> Page:
    """The page of a sweep folder (or a figure folder holding results.csv); with ``write_cells``, each finished
    cell without a report gets one, and the page links to it."""
    from layerprobe.plot import BLOCK_ORDER  # noqa: F401  (selects the Agg backend before the sweep module plots)
    from layerprobe.sweep import PAIRED_TABLE, RESULTS, SWEEP_JSON, plot_sweep
    from layerprobe.sweep.results import _panels

    table = pd.read_csv(folder / RESULTS)
    for col in ("condition", "group"):
        if col in table:
            table[col] = table[col].fillna("").astype(str)
    axes = sweep_axes(table)
    plot, baseline = _spec(folder)
    plot = plot or default_panels(table)
    page = Page(f"layerprobe sweep {folder.name}")
    state = json.loads((folder / SWEEP_JSON).read_text()) if (folder / SWEEP_JSON).is_file() else {}
    walls = [r.get("wall_seconds", 0) for r in state.get("runs", [])]
    page.text(
        f"{len(table)} finished cells; factors: {', '.join(axes) or 'none'}; seeds: "
        f"{', '.join(map(str, sorted(set(table['seed']))))}."
        + (f" Sweep invocations: {len(walls)}, {sum(walls):.0f} s in all." if walls else "")
        + (f" Source: {state.get('source')}." if state.get("source") else ""),
        "muted",
    )

    links = _cell_links(folder, table, write_cells)
    _results(page, table, axes, links)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ci = plot_sweep(table, plot, axes, tmp)
        page.heading("Means with 95 % intervals", anchor="intervals")
        if len(ci):
            wide, methods = _interval_table(ci, axes)
            page.text(f"mean [95 % interval]; method: {methods}.", "muted")
            page.table(wide, text_columns=tuple(wide.columns))
        if baseline and "condition" in table:
            _paired(page, table, ci, axes, baseline, tmp / "paired.png")
        elif (folder / PAIRED_TABLE).is_file():
            page.heading("Paired comparisons", anchor="paired")
            page.table(pd.read_csv(folder / PAIRED_TABLE), text_columns=("condition", "metric"))
        page.heading("Study figures", anchor="figures")
        names = [f"{_safe('+'.join(m))}.png" for m in _panels(plot)]
        figs = [tmp / n for n in dict.fromkeys(names) if (tmp / n).is_file()]
        page.figures(figs, [p.stem for p in figs])
    if (folder / "claims.csv").is_file():  # a study's claims (layerprobe.analyse.paired.write_claims), when it has them
        _claims(page, folder)
    page.heading("Relate: layer features vs outcomes", anchor="relate")
    _relate(folder, page)
    return page
