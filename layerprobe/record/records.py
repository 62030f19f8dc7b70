"""Records: one long table, the contract between stages.

Training, diffing and evaluation write rows with exactly :data:`COLUMNS`; analysis and plots read them
back with :func:`load_records`. Rows are written as Parquet part files while training runs, so a killed
job loses at most the rows of its last unflushed interval. This module never imports torch.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq

from layerprobe.core.rundir import RECORDS as RECORDS_DIR  # the run folder's layout has one owner
from layerprobe.core.rundir import is_run

_PART = re.compile(r"[\w.]+-r\d+-\d+\.parquet")  # a RecordWriter part file
COLUMNS = ("run", "phase", "step", "layer", "block", "module", "param", "quantity", "value")
SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("phase", pa.string()),
        ("step", pa.int64()),
        ("layer", pa.int64()),
        ("block", pa.string()),
        ("module", pa.string()),
        ("param", pa.string()),
        ("quantity", pa.string()),
        ("value", pa.float64()),
    ]
)


class RecordWriter:
    """Buffers rows and writes them as Parquet part files ``<out>/records/<phase>-r<rank>-<seq>.parquet``.

    A part is written to a temporary name and renamed, so a reader never sees half a file. Its number is the next
    free one at the time it is written, so several writers of one phase and rank in a process (the recorder and the
    probes, :mod:`layerprobe.train.probes`) share the phase's files without overwriting each other's parts.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        run: str,
        phase: str,
        rank: int = 0,
        flush_every_s: float = 30.0,
        flush_rows: int = 200_000,
    ):
        self.dir = Path(out_dir) / RECORDS_DIR
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise OSError(
                f"cannot write records to {self.dir}: {e.strerror or e}; pass an output folder you can write to"
            ) from None
        self.run, self.phase, self.rank = str(run), str(phase), int(rank)
        self.flush_every_s, self.flush_rows = flush_every_s, flush_rows
        self._cols: dict[str, list] = {c: [] for c in COLUMNS}
        self._seq = self._next_seq()
        self._last_flush = time.monotonic()

    def _next_seq(self) -> int:
        parts = [p.stem.rsplit("-", 1)[-1] for p in self.dir.glob(f"{self.phase}-r{self.rank}-*.parquet")]
        return max((int(n) for n in parts if n.isdigit()), default=-1) + 1

    def add(self, step: int, layer: int, block: str, module: str, param: str, quantity: str, value: float) -> None:
        c = self._cols
        c["run"].append(self.run)
        c["phase"].append(self.phase)
        c["step"].append(int(step))
        c["layer"].append(int(layer))
        c["block"].append(block)
        c["module"].append(module)
        c["param"].append(param)
        c["quantity"].append(quantity)
        c["value"].append(float(value))

    def __len__(self) -> int:
        return len(self._cols["value"])

    def maybe_flush(self) -> None:
        if len(self) >= self.flush_rows or (len(self) and time.monotonic() - self._last_flush >= self.flush_every_s):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not len(self):
            return
        table = pa.table({c: self._cols[c] for c in COLUMNS}, schema=SCHEMA)
        self._seq = max(self._seq, self._next_seq())  # another writer of this phase and rank may have written
        final = self.dir / f"{self.phase}-r{self.rank}-{self._seq:06d}.parquet"
        tmp = final.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._seq += 1
        self._cols = {c: [] for c in COLUMNS}


def drop_rows_after(out_dir: str | os.PathLike, phase: str, rank: int, step: int) -> int:
    """Drop the rows of ``phase`` (rank ``rank``) written for steps after ``step``: a phase resumed from its
    checkpoint at ``step`` records those steps again. Part files are rewritten atomically; returns the rows dropped."""
    dropped = 0
    for f in sorted((Path(out_dir) / RECORDS_DIR).glob(f"{phase}-r{rank}-*.parquet")):
        table = pq.read_table(f)
        keep = pa.compute.less_equal(table.column("step"), step)
        n = table.num_rows - pa.compute.sum(keep.cast(pa.int64())).as_py()
        if not n:
            continue
        dropped += n
        if n == table.num_rows:
            f.unlink()
            continue
        tmp = f.with_suffix(".parquet.tmp")
        pq.write_table(table.filter(keep), tmp)
        os.replace(tmp, f)
    return dropped


def table_path(path: str | os.PathLike) -> Path:
    """``path`` as a records table's path, refused unless it ends in ``.parquet`` or ``.csv`` (check it before the work
    that makes the table)."""
    path = Path(path)
    if path.suffix not in (".parquet", ".csv"):
        raise ValueError(
            f"expected an output path ending in .parquet or .csv, got {str(path)!r}; "
            f"e.g. {path.with_suffix('.parquet')}"
        )
    return path


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a records DataFrame as ``.parquet`` or ``.csv`` (by suffix), checking its columns."""
    path = table_path(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"records need columns {list(COLUMNS)}; missing {missing}")
    df = df[list(COLUMNS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False, schema=SCHEMA)
    return path


def load_records(path: str | os.PathLike, quantities: Iterable[str] | None = None) -> pd.DataFrame:
    """Load the records of one run folder, a folder of runs, or one ``.parquet``/``.csv`` file.

    Returns a DataFrame with exactly the columns in :data:`COLUMNS`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no records at {path}: expected a run folder, a folder of runs or a .parquet/.csv file"
        )
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*.parquet") if RECORDS_DIR in p.parts or p.parent == path)
        files += sorted(p for p in path.rglob("*.csv") if p.parent.name == RECORDS_DIR)
    if not files:
        raise FileNotFoundError(
            f"no records under {path}: expected Parquet files in a '{RECORDS_DIR}/' folder "
            "(written by `layerprobe train --record`, RecorderCallback or `layerprobe diff --out`)"
        )
    frames = [
        _named(
            f,
            pd.read_csv(f, keep_default_na=False, dtype={"param": str, "module": str, "block": str})
            if f.suffix == ".csv"
            else pd.read_parquet(f),
        )
        for f in files
    ]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{files[0]} is not a records table: missing columns {missing}")
    df = df[list(COLUMNS)].astype({"step": "int64", "layer": "int64", "value": "float64"})
    if quantities is not None:
        df = df[df["quantity"].isin(list(quantities))].reset_index(drop=True)
    return df


def _named(f: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Rows a run folder's training wrote (``<run>/records/<phase>-r<rank>-<seq>.parquet``) are that run's, named
    by its folder: a CPT reused from another run keeps its files unchanged (hard links) and still reads as this
    run's. Other files keep the run names they were written with."""

    if f.parent.name == RECORDS_DIR and _PART.fullmatch(f.name) and is_run(f.parent.parent) and len(df):
        df["run"] = f.parent.parent.name
    return df


def package_versions(
    names: Iterable[str] = (
        "torch",
        "transformers",
        "peft",
        "trl",
        "datasets",
        "accelerate",
        "safetensors",
        "numpy",
        "layerprobe",
    ),
) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_commit(path: str | os.PathLike = ".") -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_meta(out_dir: str | os.PathLike, phase: str, meta: Mapping) -> Path:
    """Write run metadata beside the records as ``records/meta-<phase>.json`` (versions and commit added)."""
    d = Path(out_dir) / RECORDS_DIR
    d.mkdir(parents=True, exist_ok=True)
    full = {
        "phase": phase,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_commit": git_commit(Path(__file__).parent),
        **dict(meta),
    }
    path = d / f"meta-{phase}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(full, indent=2, default=str, ensure_ascii=False))
    os.replace(tmp, path)
    return path
