"""layerprobe: see, layer by layer, what fine-tuning does to a language model.

Public names are imported lazily, so ``import layerprobe`` (and the plotting code) stays free of torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "diff_checkpoints": "layerprobe.diff",
    "DiffConfig": "layerprobe.diff",
    "parse_name": "layerprobe.names",
    "ParamName": "layerprobe.names",
    "load_records": "layerprobe.records",
    "RecordWriter": "layerprobe.records",
    "COLUMNS": "layerprobe.records",
    "every": "layerprobe.schedules",
    "logspaced": "layerprobe.schedules",
    "RecorderCallback": "layerprobe.recorder_callback",
    "Recorder": "layerprobe.recorder",
    "ProbeCallback": "layerprobe.probes",
    "heatmap_layer_step": "layerprobe.plot",
    "heatmap_layer_module": "layerprobe.plot",
    "plot_run": "layerprobe.plot",
    "parse_selector": "layerprobe.select",
    "select_params": "layerprobe.select",
    "Selection": "layerprobe.select",
    "apply_requires_grad": "layerprobe.select",
    "lora_targets": "layerprobe.select",
    "frozen_moved": "layerprobe.select",
    "relate_runs": "layerprobe.relate",
    "relate_features": "layerprobe.relate",
    "compare_family": "layerprobe.paired",
    "ClaimsConfig": "layerprobe.paired",
    "RelateConfig": "layerprobe.relate_config",
    "attribute_change": "layerprobe.attribute",
    "AttributeConfig": "layerprobe.attribute",
    "WeightSwapper": "layerprobe.swap",
    "resolve_model": "layerprobe.presets",
    "truncate_layers": "layerprobe.presets",
    "gozaru_rewrite": "layerprobe.realdata",
    "load_dolly_gozaru": "layerprobe.realdata",
    "load_news_text": "layerprobe.realdata",
    "load_soseki": "layerprobe.realdata",
    "load_jcommonsenseqa": "layerprobe.realdata",
    "mc_accuracy": "layerprobe.forgetting",
    "heldout_loss": "layerprobe.forgetting",
    "TrainConfig": "layerprobe.config",
    "PhaseConfig": "layerprobe.config_phase",
    "run_pipeline": "layerprobe.pipeline",
    "evaluate_model": "layerprobe.evaluate",
    "load_sweep": "layerprobe.sweep",
    "run_sweep": "layerprobe.sweep",
    "wilson": "layerprobe.stats",
    "t_mean_ci": "layerprobe.stats",
    "paired_t": "layerprobe.stats",
    "Anchor": "layerprobe.anchor",
    "AnchorCallback": "layerprobe.anchor",
    "add_replay": "layerprobe.stages",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605  (a list, built from the table above)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'layerprobe' has no attribute {name!r}")
