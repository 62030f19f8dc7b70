"""The evaluation cache now lives in :mod:`layerprobe.evaluation.evalservice` (one key scheme for every evaluation);
these names stay importable for older scripts."""

from __future__ import annotations

from collections.abc import Callable

from layerprobe.core.config_data import EvalConfig
from layerprobe.evaluation.evalservice import Evaluation, cache_dir, cache_key, cached, enabled, model_id  # noqa: F401


def eval_key(folders: list[str], data, cfg: EvalConfig, max_length: int) -> str:
    """The service's key of evaluating the model in ``folders`` on ``data`` with ``cfg``."""
    return cache_key(model_id(folders), Evaluation.of(data, cfg, max_length).key())


def cached_evaluation(
    folders: list[str], data, cfg: EvalConfig, max_length: int, run: Callable[[], tuple[dict, list[dict]]]
) -> tuple[dict, list[dict], bool]:
    """``run()``'s (metrics, answer rows, hit), through the service's cache."""
    return cached(eval_key(folders, data, cfg, max_length), run)
