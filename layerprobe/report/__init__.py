"""``write_report``: one self-contained HTML page for a run folder or a sweep (figures embedded, works offline).

- a run folder (config.yaml / summary.json): :mod:`layerprobe.report.run`;
- a sweep folder or a figure folder with results.csv: :mod:`layerprobe.report.sweep`.

Reads the stages' files only; never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from layerprobe.core import rundir

REPORT = "report.html"


def kind_of(path: str | os.PathLike) -> str:
    """``run`` or ``sweep``: what a folder holds, judged by its files."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(
            f"no folder at {p}: expected a run folder (with config.yaml or summary.json) or a "
            "sweep folder (with results.csv)"
        )

    if rundir.summary_path(p).is_file() or rundir.is_run(p):
        return "run"
    if (p / "results.csv").is_file():
        return "sweep"
    raise ValueError(
        f"{p} is neither a run folder (no config.yaml or summary.json) nor a sweep (no results.csv); "
        "give the folder `layerprobe train --out` or `layerprobe sweep` wrote"
    )


def write_report(path: str | os.PathLike, out: str | os.PathLike | None = None, cells: bool = True) -> Path:
    """Write the report of a run or a sweep to ``out`` (default ``PATH/report.html``) and return its path. For a
    sweep, ``cells`` also writes each finished cell's own report (linked from the page) where it is missing."""
    from layerprobe.plot.style import figure_formats

    p = Path(path)
    kind = kind_of(p)
    with figure_formats("png"):  # the page embeds PNGs; no extra files are written
        if kind == "run":
            from layerprobe.report.run import build_run_page

            page = build_run_page(p)
        else:
            from layerprobe.report.sweep import build_sweep_page

            page = build_sweep_page(p, write_cells=cells)
    return page.write(Path(out) if out else p / REPORT)
