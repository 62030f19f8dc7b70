"""The per-item answers of runs: what each evaluation wrote into ``eval/<phase>-answers.jsonl`` (one row per probe,
question or instruction), read back per metric; and a sweep's :data:`ANSWERS_TABLE`, the same rows of every cell in
one Parquet file, so the claims of :mod:`layerprobe.analyse.paired` re-derive item by item without the run folders."""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import pandas as pd

from layerprobe.core import rundir

# metric -> (the answers' kind, the per-item field, 0/1 or continuous)
ITEM_METRICS = {
    "cloze_acc": ("cloze", "correct", True),
    "cloze_heldout_acc": ("cloze_heldout", "correct", True),
    "cloze_margin": ("cloze", "margin", False),
    "cloze_heldout_margin": ("cloze_heldout", "margin", False),
    "qa_acc": ("qa", "correct", True),
    "gozaru_rate": ("instruction", "correct", True),
    "gozaru_first": ("instruction", "first", True),
    "eos_rate": ("instruction", "eos", True),
    "style_logodds": ("instruction", "style_logodds", False),
}
ANSWERS_TABLE = "answers.parquet"  # a sweep's per-item answers of every cell, beside its results.csv


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@lru_cache(maxsize=4)
def _read_answers_table(path: str, mtime_ns: int) -> pd.DataFrame:
    """A sweep's answers table, read once per family of claims (every claim's every run asks for its rows)."""
    return pd.read_parquet(path)


def _answers(run_dir: Path, phase: str) -> list[dict]:
    """A run's per-item answers at ``phase``: its ``eval/<phase>-answers.jsonl``, or, where the run folder is gone,
    its rows of the sweep's :data:`ANSWERS_TABLE` beside it (``figures/...`` of a committed study)."""
    path = rundir.answers_path(run_dir, phase)
    if path.is_file():
        return _jsonl(path)
    table = run_dir.parent / ANSWERS_TABLE
    if table.is_file():
        rows = _read_answers_table(str(table), table.stat().st_mtime_ns)
        rows = rows[(rows["cell"] == run_dir.name) & (rows["phase"] == phase)]
        if len(rows):
            return [
                {k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
                for r in rows.to_dict("records")
            ]
    raise FileNotFoundError(
        f"no per-item answers at {path} (nor in {table}); evaluate the run first (layerprobe eval --out RUN)"
    )


def has_answers(run_dir: str | os.PathLike, phase: str) -> bool:
    try:
        return bool(_answers(Path(run_dir), phase))
    except FileNotFoundError:
        return False


def item_values(run_dir: str | os.PathLike, phase: str, metric: str) -> pd.Series:
    """One run's per-item values of ``metric`` at ``phase``, indexed by the item's prompt."""
    if metric not in ITEM_METRICS:
        raise ValueError(f"metric must be one of {', '.join(ITEM_METRICS)}, got {metric!r}")
    kind, key, _ = ITEM_METRICS[metric]
    rows = _answers(Path(run_dir), phase)
    values = {r["prompt"]: float(r[key]) for r in rows if r.get("kind") == kind and r.get(key) is not None}
    return pd.Series(values, name=metric, dtype=float).dropna()


ANSWER_FIELDS = (
    "kind",
    "relation",
    "prompt",
    "answer",
    "output",
    "correct",
    "first",
    "eos",
    "logprob",
    "margin",
    "style_logodds",
)


def answers_table(sweep_dir: Path, cells: list[str]) -> pd.DataFrame:
    """One row per (cell, phase, item) of the cells' ``eval/<phase>-answers.jsonl``: the per-item inputs of every
    claim (a few MB for a study), so a claim can be re-derived item by item without the run folders."""
    rows = []
    for cell in cells:
        for phase in rundir.EVAL_PHASES:
            f = rundir.answers_path(sweep_dir / cell, phase)
            if f.is_file():
                rows += [{"cell": cell, "phase": phase, **{k: r.get(k) for k in ANSWER_FIELDS}} for r in _jsonl(f)]
    return pd.DataFrame(rows, columns=["cell", "phase", *ANSWER_FIELDS])
