"""What a run folder holds once made: the config it was made with, the metrics table, the answers, the summary;
and finding run folders. The layout and the stage markers are :mod:`layerprobe.core.rundir`'s. Never imports torch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from layerprobe.core.config import dump_yaml
from layerprobe.core.rundir import (
    CONFIG,
    LOCK,
    METRICS,
    SUMMARY,
    answers_path,
    config_path,
    is_run,
    stage_dir,
    summary_path,
    write_json,
    write_text,
)

# -- config --------------------------------------------------------------------------------------------------------


def write_config(run_dir, cfg) -> None:
    write_text(config_path(run_dir), f"# layerprobe run config (hash {cfg.hash()})\n" + dump_yaml(cfg))


def read_config_dict(run_dir) -> dict:
    import yaml

    return yaml.safe_load(config_path(run_dir).read_text(encoding="utf-8")) or {}


def is_empty_or_run(run_dir) -> bool:
    """Whether ``run_dir`` may be used as a run folder: absent, empty (but for a lock) or a run folder."""
    run_dir = Path(run_dir)
    return not run_dir.exists() or is_run(run_dir) or not [p for p in run_dir.iterdir() if p.name != LOCK]


# -- the metrics table and the summary -----------------------------------------------------------------------------


def write_metrics(run_dir, metrics: dict[str, dict]) -> Path:
    """The one table of evaluation numbers, ``eval/metrics.csv``: one row per (model, metric)."""
    lines = ["model,metric,value"]
    for phase, values in metrics.items():
        for name, value in values.items():
            lines.append(f"{phase},{name},{'' if value is None else repr(float(value))}")
    return write_text(stage_dir(run_dir, "eval") / METRICS, "\n".join(lines) + "\n")


def read_metrics(run_dir) -> dict[str, dict[str, float]]:
    """``eval/metrics.csv`` back as {model: {metric: value}} (an empty cell is NaN; no table: {})."""
    f = stage_dir(run_dir, "eval") / METRICS
    out: dict[str, dict[str, float]] = {}
    if not f.is_file():
        return out
    for line in f.read_text(encoding="utf-8").splitlines()[1:]:
        if line.strip():
            phase, name, value = line.split(",")
            out.setdefault(phase, {})[name] = float(value) if value else math.nan
    return out


def write_answers(run_dir, phase: str, rows: Iterable[dict]) -> Path:
    return write_text(answers_path(run_dir, phase), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_summary(run_dir, summary: dict) -> Path:
    return write_json(summary_path(run_dir), summary)


def read_summary(run_dir) -> dict | None:
    f = summary_path(run_dir)
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


# -- finding runs --------------------------------------------------------------------------------------------------


def find_runs(paths: Iterable[str | os.PathLike], finished: bool = True) -> list[Path]:
    """Run folders among ``paths``: each path is a run folder or a folder of them. ``finished``: only runs with
    a summary.json (every stage done); otherwise every run folder."""
    mark = SUMMARY if finished else CONFIG
    runs: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(
                f"no sweep folder at {path}: expected a run folder (with {mark} and "
                "records/) or a folder of run folders"
            )
        if (path / mark).is_file():
            runs.append(path)
            continue
        inner = sorted(p.parent for p in path.glob(f"*/{mark}"))
        if not inner:
            raise FileNotFoundError(
                f"no runs in {path}: expected run folders (made by `layerprobe train`) holding "
                f"{mark}, as {path}/RUN/{mark}"
            )
        runs += inner
    return list(dict.fromkeys(r.resolve() for r in runs))
