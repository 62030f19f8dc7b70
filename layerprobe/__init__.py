"""layerprobe: see, layer by layer, what fine-tuning does to a language model.

Public names are imported lazily, so ``import layerprobe`` (and the plotting code) stays free of torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "diff_checkpoints": "layerprobe.weights.diff",
    "DiffConfig": "layerprobe.weights.diff",
    "parse_name": "layerprobe.core.names",
    "ParamName": "layerprobe.core.names",
    "load_records": "layerprobe.record.records",
    "RecordWriter": "layerprobe.record.records",
    "COLUMNS": "layerprobe.record.records",
    "every": "layerprobe.record.schedules",
    "logspaced": "layerprobe.record.schedules",
    "RecorderCallback": "layerprobe.record.recorder_callback",
    "Recorder": "layerprobe.record.recorder",
    "ProbeCallback": "layerprobe.train.probes",
    "heatmap_layer_step": "layerprobe.plot",
    "heatmap_layer_module": "layerprobe.plot",
    "plot_run": "layerprobe.plot",
    "parse_selector": "layerprobe.train.select",
    "select_params": "layerprobe.train.select",
    "Selection": "layerprobe.train.select",
    "apply_requires_grad": "layerprobe.train.select",
    "lora_targets": "layerprobe.train.select",
    "frozen_moved": "layerprobe.train.select",
    "relate_runs": "layerprobe.analyse.relate",
    "relate_features": "layerprobe.analyse.relate",
    "compare_family": "layerprobe.analyse.paired",
    "ClaimsConfig": "layerprobe.analyse.paired",
    "RelateConfig": "layerprobe.analyse.relate_config",
    "attribute_change": "layerprobe.attribution.attribute",
    "AttributeConfig": "layerprobe.attribution.attribute",
    "WeightSwapper": "layerprobe.attribution.swap",
    "resolve_model": "layerprobe.sources.presets",
    "truncate_layers": "layerprobe.sources.presets",
    "gozaru_rewrite": "layerprobe.sources.realdata",
    "load_dolly_gozaru": "layerprobe.sources.realdata",
    "load_news_text": "layerprobe.sources.realdata",
    "load_soseki": "layerprobe.sources.realdata",
    "load_jcommonsenseqa": "layerprobe.sources.realdata",
    "mc_accuracy": "layerprobe.evaluation.forgetting",
    "heldout_loss": "layerprobe.evaluation.forgetting",
    "TrainConfig": "layerprobe.core.config",
    "PhaseConfig": "layerprobe.core.config_phase",
    "run_pipeline": "layerprobe.train.pipeline",
    "evaluate_model": "layerprobe.evaluation.evaluate",
    "load_sweep": "layerprobe.sweep",
    "run_sweep": "layerprobe.sweep",
    "wilson": "layerprobe.core.stats",
    "t_mean_ci": "layerprobe.core.stats",
    "paired_t": "layerprobe.core.stats",
    "Anchor": "layerprobe.weights.anchor",
    "AnchorCallback": "layerprobe.weights.anchor",
    "add_replay": "layerprobe.train.stages",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605  (a list, built from the table above)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'layerprobe' has no attribute {name!r}")
