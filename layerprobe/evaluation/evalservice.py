"""The evaluation service: evaluate one model on one evaluation, once, under one cache key.

An :class:`Evaluation` is what a model is evaluated on and how: the evaluation set, trimmed once by the config's
limits (``eval.max_probes`` and the others), the eval config, the context length and the ``data.mc`` file the
harness's ``layerprobe_mc`` task reads. :meth:`Evaluation.run` scores a loaded model in one pass: the project's
probes, generation and losses (:func:`layerprobe.evaluation.evaluate.evaluate_model`), then the lm-evaluation-harness
tasks of ``eval.lm_eval_tasks`` on the same model object (:mod:`layerprobe.evaluation.harness`). The pipeline's eval
stage, the ``eval`` command, sweeps (through the pipeline) and attribution's variants all go through it.

One key scheme, through :func:`layerprobe.core.keys.digest`: :func:`cache_key` of

- the model: the content hashes of its folders (:func:`layerprobe.core.rundir.content_hash`: bytes, not file times),
  or for an attribution variant the base's and the tuned model's hashes and the (group, mode) swapped;
- :meth:`Evaluation.key`: the eval config, the context length, the digest of the trimmed evaluation set, what the
  harness tasks read (:func:`layerprobe.evaluation.harness.data_digest`) and :func:`code_version` (layerprobe's version
  and a digest of the scoring modules' source, so a changed scorer never serves old metrics).

Entries live in ``<cache root>/evals/<key>/`` (``$LAYERPROBE_CACHE``, see
:func:`layerprobe.sources.presets.cache_root`), written atomically; ``LAYERPROBE_EVAL_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from layerprobe.core.config_data import EvalConfig
from layerprobe.core.keys import digest
from layerprobe.core.rundir import content_hash
from layerprobe.evaluation.evaluate import EvalSet, evaluate_model
from layerprobe.evaluation.harness import data_digest, run_tasks
from layerprobe.sources.presets import cache_root

# the modules whose source decides the numbers an evaluation gives (relative to the package folder)
SCORING_SOURCES = (
    "evaluate.py",
    "generation.py",
    "forgetting.py",
    "harness.py",
    "evalservice.py",
    "tasks/layerprobe_mc.py",
    "tasks/layerprobe_mc.yaml",
)


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """layerprobe's version and a digest of the scoring modules' source (:data:`SCORING_SOURCES`)."""
    from layerprobe import __version__

    root = Path(__file__).parent
    return {
        "layerprobe": __version__,
        "scorers": digest({name: (root / name).read_text(encoding="utf-8") for name in SCORING_SOURCES}),
    }


def model_id(folders: list[str]) -> list[str]:
    """A model by its files' content: the hash of each folder (base folder, then adapter)."""
    return [content_hash(f) for f in folders]


def cache_key(model, evaluation: str) -> str:
    """The one cache key: a model's identity (:func:`model_id`, or a variant's dict) and :meth:`Evaluation.key`."""
    return digest({"model": model, "evaluation": evaluation})


@dataclass
class Evaluation:
    """An evaluation set already trimmed by ``cfg`` (build it with :meth:`of`), its config and context length."""

    data: EvalSet
    cfg: EvalConfig
    max_length: int = 512
    mc_path: str | None = None  # data.mc, read by the harness task layerprobe_mc

    @classmethod
    def of(cls, data: EvalSet, cfg: EvalConfig, max_length: int = 512, mc_path: str | None = None) -> Evaluation:
        """Trim ``data`` by ``cfg``'s limits, here and only here."""
        return cls(data.limited(cfg), cfg, max_length, mc_path or None)

    def key(self) -> str:
        return digest(
            {
                "eval": dataclasses.asdict(self.cfg),
                "max_length": self.max_length,
                "data": digest(self.data),
                "harness": data_digest(self.cfg, self.mc_path),
                "code": code_version(),
            }
        )

    def run(self, model, tok, progress: bool = False, timing: dict | None = None) -> tuple[dict, list[dict]]:
        """(metrics, answer rows) of ``model`` in memory: the probes, then the harness tasks on the same model."""
        metrics, rows = evaluate_model(model, tok, self.data, self.cfg, self.max_length, progress, timing)
        if self.cfg.lm_eval_tasks:
            t0 = time.perf_counter()
            metrics.update(run_tasks(model, tok, self.cfg, self.mc_path, batch_size=self.cfg.batch_size))
            if timing is not None:
                timing["lm_eval_seconds"] = round(time.perf_counter() - t0, 2)
        return metrics, rows

    def of_folders(
        self,
        folders: list[str],
        load: Callable[[], tuple[object, object]],
        progress: bool = False,
        timing: dict | None = None,
    ) -> tuple[dict, list[dict], bool]:
        """(metrics, rows, hit) of the model in ``folders``; ``load() -> (model, tokenizer)`` runs only on a miss."""

        def run():
            model, tok = load()
            return self.run(model, tok, progress, timing)

        return cached(cache_key(model_id(folders), self.key()), run)


# -- the store -----------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return cache_root() / "evals"


def enabled() -> bool:
    return os.environ.get("LAYERPROBE_EVAL_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cached(key: str, run: Callable[[], tuple[dict, list[dict]]]) -> tuple[dict, list[dict], bool]:
    """``run()``'s (metrics, answer rows), from the cache when ``key`` was evaluated before; returns (metrics, rows,
    hit). ``run`` is only called on a miss; its result is then stored."""
    if not enabled():
        return (*run(), False)
    entry = cache_dir() / key
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
