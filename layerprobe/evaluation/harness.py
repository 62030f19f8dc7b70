"""lm-evaluation-harness tasks on a model already in memory: the field's own measure of general forgetting.

``eval.lm_eval_tasks`` names harness tasks (hub tasks such as ``hellaswag`` when online, tasks from YAML files in
``eval.lm_eval_include``, and ``layerprobe_mc``, shipped in :mod:`layerprobe.evaluation.tasks`: the ``--data.mc`` set).
:func:`run_tasks` wraps the loaded model and tokenizer in the harness's ``HFLM`` (no second load, no copy) and
runs ``lm_eval.simple_evaluate``; every metric of every task comes back as ``lm_eval/<task>/<metric>``
(``acc``, ``acc_stderr``, ``acc_norm``, ... ; a filter other than ``none`` is appended as ``<metric>:<filter>``),
plus ``lm_eval/<task>/n``, the documents scored. :func:`check` raises the one-line errors of a missing harness,
a missing include folder or an unknown task name before any training is spent (:mod:`layerprobe.train.preflight`).

The harness is an optional extra (``pip install 'layerprobe[lm-eval]'``); nothing here imports it at module level.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import os
from pathlib import Path

from layerprobe.sources.realdata import jcommonsenseqa_file

PREFIX = "lm_eval"
TASKS_DIR = Path(__file__).with_name("tasks")  # the task YAMLs layerprobe ships
MC_TASKS = ("layerprobe_mc",)  # shipped tasks that read data.mc (passed as the metadata key mc_path)
INSTALL = "pip install 'layerprobe[lm-eval]' (or pip install lm-eval)"


def metric_key(task: str, metric: str) -> str:
    """The name of a harness metric in eval/metrics.csv and summary.json."""
    return f"{PREFIX}/{task}/{metric}"


def is_harness_metric(name: str) -> bool:
    return name.startswith(PREFIX + "/")


class MissingHarness(ImportError, ValueError):
    """lm-evaluation-harness is not installed (a ValueError too: the CLI prints it on one line)."""


def require():
    """The ``lm_eval`` module, or a one-line :class:`MissingHarness` saying how to install it."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError as e:
        raise MissingHarness(
            f"eval.lm_eval_tasks needs lm-evaluation-harness, which is not installed ({e}); "
            f"install it with {INSTALL}, or leave eval.lm_eval_tasks empty"
        ) from None
    return lm_eval


def version() -> str | None:
    """The installed harness's version (None when it is not installed); part of the evaluation cache's key."""
    try:
        from importlib.metadata import version as v

        return v("lm_eval")
    except Exception:
        return None


def includes(cfg) -> list[str]:
    """The task folders searched besides the harness's own: layerprobe's, then ``eval.lm_eval_include``."""
    return [str(TASKS_DIR)] + ([str(Path(cfg.lm_eval_include).expanduser())] if cfg.lm_eval_include else [])


@functools.lru_cache(maxsize=8)
def _manager(paths: tuple[str, ...], defaults: bool, metadata: tuple):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=defaults, metadata=dict(metadata))


def task_manager(cfg, mc_path: str | None = None):
    """A TaskManager over layerprobe's tasks and ``eval.lm_eval_include``; the harness's ~15,000 own task configs
    are indexed (several seconds) only when a task named is not found in those folders."""
    require()
    meta = (("mc_path", str(mc_path)),) if mc_path else ()
    local = _manager(tuple(includes(cfg)), False, meta)
    if all(t in local.all_tasks for t in cfg.lm_eval_tasks):
        return local
    return _manager(tuple(includes(cfg)), True, meta)


def check(cfg, mc_path: str | None = None) -> None:
    """One-line errors, before anything runs: the harness missing, the include folder missing, a task unknown, or
    a shipped task that reads ``data.mc`` without one."""
    if not cfg.lm_eval_tasks:
        return
    require()
    if cfg.lm_eval_include and not Path(cfg.lm_eval_include).expanduser().is_dir():
        raise FileNotFoundError(
            f"eval.lm_eval_include must be a folder of lm-evaluation-harness task YAMLs, got "
            f"{cfg.lm_eval_include!r}, which is not a folder; fix the path or leave it empty"
        )
    manager = task_manager(cfg, mc_path)
    for task in cfg.lm_eval_tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"unknown lm-evaluation-harness task {task!r} in eval.lm_eval_tasks; {hint}expected a "
                f"task of the harness (lm_eval --tasks list), of layerprobe ({', '.join(MC_TASKS)}) or "
                f"of a YAML in eval.lm_eval_include (got {cfg.lm_eval_include or 'none'})"
            )
        if task in MC_TASKS and not mc_path:
            raise ValueError(
                f"the task {task} scores the multiple-choice set of data.mc, got no data.mc; pass "
                "--data.mc FILE (JCommonsenseQA's JSON lines), or drop it from eval.lm_eval_tasks"
            )


def flatten(results: dict) -> dict[str, float]:
    """``simple_evaluate``'s results as ``{lm_eval/<task>/<metric>: value}`` (numbers only; a stderr the harness
    could not compute, "N/A", is NaN), with ``lm_eval/<task>/n``, the documents each task scored."""
    out: dict[str, float] = {}
    for task, values in {**results.get("results", {}), **results.get("groups", {})}.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt:  # alias, name, ...
                continue
            name = metric if filt == "none" else f"{metric}:{filt}"
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                continue
            try:
                out[metric_key(task, name)] = float(value)
            except ValueError:  # "N/A"
                out[metric_key(task, name)] = float("nan")
    for task, n in results.get("n-samples", {}).items():
        out[metric_key(task, "n")] = float(n.get("effective", n.get("original", 0)))
    return out


def run_tasks(model, tok, cfg, mc_path: str | None = None, batch_size: int = 8) -> dict[str, float]:
    """Run ``eval.lm_eval_tasks`` on ``model`` (in memory, as it is) with ``tok``; ``{}`` when none are named.

    ``eval.lm_eval_limit`` > 0 scores the first N documents of each task (the harness's ``limit``). Few-shot counts,
    prompts and metrics are the tasks' own, as ``lm_eval`` itself would run them.
    """
    if not cfg.lm_eval_tasks:
        return {}
    lm_eval = require()
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(cfg, mc_path)
    was_training = model.training
    model.eval()
    quiet = [logging.getLogger(n) for n in ("lm_eval", "lm-eval")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(cfg.lm_eval_tasks),
            task_manager=manager,
            limit=cfg.lm_eval_limit or None,
            log_samples=False,
            bootstrap_iters=1000,
        )
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
        model.train(was_training)
    return flatten(results or {})


def data_digest(cfg, mc_path: str | None = None) -> dict:
    """What the harness tasks read, for the evaluation cache's key: the content of the include folder and of the
    shipped tasks, the data.mc file (for the tasks that read it) and the harness's version (hub tasks' data are
    pinned by the harness's own task configs)."""
    if not cfg.lm_eval_tasks:
        return {}
    out = {"lm_eval": version(), "shipped": _files_digest(TASKS_DIR)}
    if cfg.lm_eval_include and Path(cfg.lm_eval_include).expanduser().is_dir():
        out["include"] = _files_digest(Path(cfg.lm_eval_include).expanduser())
    if mc_path and any(t in MC_TASKS for t in cfg.lm_eval_tasks):
        out["mc"] = _files_digest(jcommonsenseqa_file(mc_path))
    return out


def _files_digest(path: Path) -> str:
    """A hash of a file, or of a folder's files (relative names and bytes; no hidden files, no __pycache__)."""
    files = (
        [path]
        if path.is_file()
        else sorted(
            f
            for f in path.rglob("*")
            if f.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in f.relative_to(path).parts)
        )
    )
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f"{f.name if f == path else f.relative_to(path)}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()
