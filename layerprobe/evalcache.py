"""A cache of evaluations, keyed by what they read: the model's files, the evaluation set and its settings.

A sweep evaluates each distinct model once: cells that share a CPT model (copied, or trained again to the same
bytes) share its evaluation, and the base model is evaluated once per machine. The key is a SHA-256 over the
content hash of the model folder(s) (:func:`layerprobe.rundir.content_hash`: weights, config, tokenizer, not the
pipeline's markers), the evaluation config, the context length, the evaluation data and the evaluation code's
version (:data:`layerprobe.evaluate.EVAL_VERSION`), so one changed byte or setting, or metrics added since, is a
miss.
Entries live in ``<cache root>/evals/<key>/`` (``$LAYERPROBE_CACHE``, see :func:`layerprobe.presets.cache_root`)
and are written atomically; ``LAYERPROBE_EVAL_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from layerprobe.config import EvalConfig
from layerprobe.evaluate import EVAL_VERSION

def eval_key(folders: list[str], data, cfg: EvalConfig, max_length: int) -> str:
    """The cache key of evaluating the model in ``folders`` (base folder, then adapter) on ``data`` with ``cfg``."""
    from layerprobe.rundir import content_hash

    payload = {"models": [content_hash(f) for f in folders], "eval": dataclasses.asdict(cfg),
               "max_length": max_length, "data": dataclasses.asdict(data.limited(cfg)), "code": EVAL_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def cache_dir() -> Path:
    from layerprobe.presets import cache_root

    return cache_root() / "evals"


def enabled() -> bool:
    return os.environ.get("LAYERPROBE_EVAL_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cached_evaluation(folders: list[str], data, cfg: EvalConfig, max_length: int,
                      run: Callable[[], tuple[dict, list[dict]]]) -> tuple[dict, list[dict], bool]:
    """``run()``'s (metrics, answer rows), from the cache when this model was evaluated so before.

    Returns (metrics, rows, hit). ``run`` is only called on a miss; its result is then stored.
    """
    if not enabled():
        return (*run(), False)
    entry = cache_dir() / eval_key(folders, data, cfg, max_length)
    if (entry / "metrics.json").is_file():
        rows = [json.loads(line) for line in (entry / "answers.jsonl").read_text(encoding="utf-8").splitlines()]
        return json.loads((entry / "metrics.json").read_text()), rows, True
    metrics, rows = run()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        with open(tmp / "answers.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (tmp / "metrics.json").write_text(json.dumps(metrics))  # written last: its presence marks a whole entry
        try:
            os.rename(tmp, entry)
        except OSError:  # another process stored the same entry first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metrics, rows, False
