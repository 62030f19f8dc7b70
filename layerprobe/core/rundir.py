"""The run folder: its layout, atomic writes, stage markers, the lock, reusing stages, content hashes (what the
run made, its config, metrics table, answers and summary, and finding runs: :mod:`layerprobe.core.run_results`).

Every other module reaches a run folder's files through here; no other module spells a stage folder's name::

    <run>/
      config.yaml      the resolved config: every finished stage in the folder was made with it
      .lock            held (flock) by the one process working in the folder; holds its pid
      cpt/             CPT adapter (or full model)        each stage folder: STARTED (its fingerprint) while it
      merged/          base + CPT, safetensors + tokenizer   runs, DONE (its info, fingerprint, inputs) once its
      sft/             SFT adapter (or full model)           outputs are complete; trainer/ holds the rotating
      eval/            metrics.csv (the one metrics table)   checkpoints of a training stage until it is done
                       and <model>-answers.jsonl
      sft/kept/        with sft.keep_best: step-NNNNNN.safetensors, the trainable weights at each probe step,
                       and best/ (the chosen step's adapter or model, choice.json), evaluated as 'sft_best';
                       kept, like the stage, until the SFT stage is cleared
      records/         Parquet records of both phases
      figures/         heatmaps drawn from the records
      summary.json     derived from eval/metrics.csv and the DONE markers; written last

Never imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

STAGES = ("cpt", "merge", "sft", "eval")
_FOLDERS = {"cpt": "cpt", "merge": "merged", "sft": "sft", "eval": "eval"}
# the models an evaluation scores: before CPT, after CPT, after SFT, and (with sft.keep_best) at the chosen SFT step
EVAL_PHASES = ("base", "cpt", "sft", "sft_best")
CONFIG = "config.yaml"
SUMMARY = "summary.json"
DONE = "DONE"
STARTED = "STARTED"
LOCK = ".lock"
CHECKPOINTS = "trainer"
KEPT = "kept"
BEST = "best"
CHOICE = "choice.json"
METRICS = "metrics.csv"
RECORDS = "records"
FIGURES = "figures"
DIFF = "diff"
ATTRIBUTE = "attribute"
ATTRIBUTE_RECORDS = "attribute.parquet"
_MARKERS = (DONE, STARTED)


# -- layout --------------------------------------------------------------------------------------------------------


def stage_dir(run_dir: str | os.PathLike, stage: str) -> Path:
    if stage not in _FOLDERS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return Path(run_dir) / _FOLDERS[stage]


def checkpoint_dir(stage_folder: str | os.PathLike) -> Path:
    """Where a training stage's Trainer keeps its rotating checkpoints (removed once the stage is done)."""
    return Path(stage_folder) / CHECKPOINTS


def kept_dir(run_dir) -> Path:
    """Where ``sft.keep_best`` keeps the trainable weights of each SFT probe step (:func:`kept_state`)."""
    return stage_dir(run_dir, "sft") / KEPT


def kept_state(run_dir, step: int) -> Path:
    return kept_dir(run_dir) / f"step-{step:06d}.safetensors"


def kept_steps(run_dir) -> list[int]:
    """The SFT steps whose state :func:`kept_dir` holds, in order."""
    folder = kept_dir(run_dir)
    found = folder.glob("step-*.safetensors") if folder.is_dir() else []
    return sorted(int(f.name[5:-12]) for f in found if f.name[5:-12].isdigit())


def best_dir(run_dir) -> Path:
    """The model of the step ``sft.keep_best`` chose (an adapter folder, or a whole model for full fine-tuning)."""
    return kept_dir(run_dir) / BEST


def records_dir(run_dir) -> Path:
    return Path(run_dir) / RECORDS


def figures_dir(run_dir) -> Path:
    return Path(run_dir) / FIGURES


def diff_dir(run_dir) -> Path:
    """Where a run's diff lives: ``layerprobe diff BASE RUN/merged RUN/sft --out RUN/diff/diff.parquet``."""
    return Path(run_dir) / DIFF


def attribute_dir(run_dir) -> Path:
    """Where ``layerprobe attribute --run RUN`` writes (``attribute.parquet``, figures)."""
    return Path(run_dir) / ATTRIBUTE


def attribute_records(folder) -> Path:
    """The attribution records in ``folder`` (a run's :func:`attribute_dir`, or ``layerprobe attribute --out``)."""
    return Path(folder) / ATTRIBUTE_RECORDS


def config_path(run_dir) -> Path:
    return Path(run_dir) / CONFIG


def summary_path(run_dir) -> Path:
    return Path(run_dir) / SUMMARY


def answers_path(run_dir, phase: str) -> Path:
    return stage_dir(run_dir, "eval") / f"{phase}-answers.jsonl"


def is_run(path: str | os.PathLike) -> bool:
    """A folder made by the pipeline (it holds config.yaml)."""
    return config_path(path).is_file()


def phase_model(run_dir, phase: str, base: str) -> tuple[str, str | None]:
    """(model folder, adapter folder or None) of the model after ``phase`` ('base', 'cpt', 'sft' or 'sft_best':
    at the SFT step ``sft.keep_best`` chose)."""
    if phase not in EVAL_PHASES:
        raise ValueError(f"unknown model {phase!r}; expected one of {', '.join(EVAL_PHASES)}")
    if phase == "base":
        return base, None
    merged = stage_dir(run_dir, "merge")
    if phase == "cpt":
        return str(merged), None
    sft = best_dir(run_dir) if phase == "sft_best" else stage_dir(run_dir, "sft")
    if (sft / "adapter_config.json").is_file():
        return str(merged), str(sft)
    return str(sft), None


# -- atomic writes -------------------------------------------------------------------------------------------------


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary name and rename it, so a reader (or a killed writer) never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(_no_nan(obj), indent=2, ensure_ascii=False, default=str))


def _no_nan(x):
    """NaN (a metric with nothing to measure) becomes null, so the JSON files are strict JSON."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


# -- stage markers -------------------------------------------------------------------------------------------------


def read_done(run_dir, stage: str) -> dict | None:
    f = stage_dir(run_dir, stage) / DONE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None


def mark_done(run_dir, stage: str, info: dict) -> None:
    """Mark a stage finished (its info, fingerprint and inputs), then drop what only a resume needed."""
    folder = stage_dir(run_dir, stage)
    write_json(folder / DONE, info)
    (folder / STARTED).unlink(missing_ok=True)
    shutil.rmtree(checkpoint_dir(folder), ignore_errors=True)


def mark_started(run_dir, stage: str, fingerprint: str) -> Path:
    """Create the stage folder and note which inputs it is being made from (a rerun resumes only the same)."""
    folder = stage_dir(run_dir, stage)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / STARTED, fingerprint)
    return folder


def started_fingerprint(run_dir, stage: str) -> str | None:
    f = stage_dir(run_dir, stage) / STARTED
    return f.read_text(encoding="utf-8").strip() if f.is_file() else None


def clear_stage(run_dir, stage: str) -> None:
    """Remove a stage's folder and the records it wrote."""
    shutil.rmtree(stage_dir(run_dir, stage), ignore_errors=True)
    rec = records_dir(run_dir)
    if stage in ("cpt", "sft") and rec.is_dir():
        for pattern in (f"{stage}-r*.parquet", f"meta-{stage}.json", f".reference-{stage}-*"):
            for f in rec.glob(pattern):
                f.unlink()


def last_checkpoint(stage_folder) -> Path | None:
    """The newest complete Trainer checkpoint of a training stage, or None. A checkpoint is complete once its
    trainer_state.json (written last) reads back; incomplete ones (a kill while saving) are removed."""
    root = checkpoint_dir(stage_folder)
    if not root.is_dir():
        return None
    found = []
    for d in root.glob("checkpoint-*"):
        step = d.name.rsplit("-", 1)[-1]
        if not (d.is_dir() and step.isdigit()):
            continue
        try:
            json.loads((d / "trainer_state.json").read_text())
            found.append((int(step), d))
        except (OSError, ValueError):
            shutil.rmtree(d, ignore_errors=True)
    return max(found)[1] if found else None


# -- the lock ------------------------------------------------------------------------------------------------------


class RunFolderBusy(OSError):
    """Another process holds the run folder."""


@contextlib.contextmanager
def locked(run_dir) -> Iterator[None]:
    """Hold the run folder for this process; another process gets a one-line error naming the holder's pid.

    An OS lock (flock) on ``.lock``: it is released when the process ends, however it ends.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / LOCK, "a+", encoding="utf-8")
    try:
        _take(fh, run_dir)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


def check_free(run_dir) -> None:
    """Raise :class:`RunFolderBusy` now if another process holds the run folder (before a base model is built or
    downloaded); creates nothing. :func:`locked` still guards the run itself."""
    lock = Path(run_dir) / LOCK
    if lock.is_file():
        with open(lock, "a+", encoding="utf-8") as fh:
            _take(fh, Path(run_dir))


def _take(fh, run_dir: Path) -> None:
    import fcntl

    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        raise RunFolderBusy(
            f"{run_dir} is in use by process {holder} (it holds {run_dir / LOCK}); wait for it "
            "to finish, stop it, or choose another --out"
        ) from None


def done_stages(run_dir) -> set[str]:
    return {s for s in STAGES if (stage_dir(run_dir, s) / DONE).is_file()}


def find_done(folders: Iterable[str | os.PathLike], fingerprints: dict[str, str], exclude=None) -> Path | None:
    """A run folder under ``folders`` (run folders or folders of them) where each stage of ``fingerprints`` is done
    with that fingerprint (``exclude``: a folder not to return, e.g. the run itself)."""
    skip = Path(exclude).resolve() if exclude is not None else None
    for folder in map(Path, folders):
        candidates = (
            [folder]
            if is_run(folder)
            else sorted(p.parent for p in folder.glob(f"*/{CONFIG}"))
            if folder.is_dir()
            else []
        )
        for run in candidates:
            if run.resolve() == skip:
                continue
            if all((read_done(run, s) or {}).get("fingerprint") == fp for s, fp in fingerprints.items()):
                return run
    return None


def adopt_stage(donor, run_dir, stage: str) -> dict:
    """Start ``run_dir``'s ``stage`` from ``donor``'s finished one: its folder as hard links (plain copies across
    file systems) and, for a training stage, its records files unchanged (a run's name is its folder's, read at
    load time). Returns the DONE info written, with ``reused_from``."""
    src, dst = stage_dir(donor, stage), stage_dir(run_dir, stage)

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns(*_MARKERS, CHECKPOINTS))
    if stage in ("cpt", "sft"):
        rec = records_dir(donor)
        for pattern in (f"{stage}-r*.parquet", f"meta-{stage}.json"):
            for f in sorted(rec.glob(pattern)) if rec.is_dir() else []:
                records_dir(run_dir).mkdir(parents=True, exist_ok=True)
                target = records_dir(run_dir) / f.name
                target.unlink(missing_ok=True)
                link(f, target)
    info = {**(read_done(donor, stage) or {}), "out": str(dst), "reused_from": str(src)}
    write_json(dst / DONE, info)
    return info


# -- content hashes ------------------------------------------------------------------------------------------------

_HASHES: dict[tuple, str] = {}


def content_hash(path: str | os.PathLike) -> str:
    """A hash of a model folder's contents (weights, configs, tokenizer: every file, by relative name and bytes;
    not the checkpoints and kept states inside a stage folder), or of one file. Equal contents give equal hashes
    wherever the folder lies; memoised per process by the files' sizes and modification times."""
    path = Path(path)
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not p.name.startswith(".")
            and p.name not in _MARKERS
            and not {CHECKPOINTS, KEPT} & set(p.relative_to(path).parts)
        )
    )
    key = (str(path.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _HASHES:
        h = hashlib.blake2b(digest_size=16)
        for f in files:
            h.update(f"{f.relative_to(path) if f != path else f.name}\0".encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]
