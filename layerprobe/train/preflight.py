"""Fail fast: the whole config checked against the model and the data before any stage trains.

Both phases' selectors, target modules and layers are applied, with the very code training uses
(:func:`layerprobe.train.models.make_trainable`), to a weightless copy of the model (the meta device: parameter names
and shapes, no memory); the SFT copy is the CPT model's architecture (untied when CPT adapted a tied embedding).
The data have been loaded by then (fields, probe and instruction files checked as they load); here the phases'
data must hold something to train on.
"""

from __future__ import annotations

from pathlib import Path

from layerprobe.train.models import make_trainable, untie_embeddings


def check_run(cfg, base: str, data) -> None:
    """Raise a one-line ValueError naming the config entry at fault, before any work is spent."""
    if not data.cpt_docs:
        raise ValueError(
            f"the CPT data ({cfg.data.cpt}) holds no documents; expected documents with text "
            "(check data.cpt, data.cpt_text_field and data.max_cpt_docs)"
        )
    if not data.sft_rows:
        raise ValueError(
            f"the SFT data ({cfg.data.sft}) holds no rows; expected prompt/completion, messages or "
            "instruction/output rows (check data.sft, data.max_sft_rows and data.heldout)"
        )
    check_phases(cfg, base)


def _skeleton(base):
    """A weightless model of ``base``: a model folder, or a transformers config (the toy base before it is built)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base) if isinstance(base, (str, Path)) else base
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_phases(cfg, base) -> None:
    """Build each phase's trainable model on the meta device, as training will; a bad selector, target module
    or layer list fails here with the phase named (``sft: layers:99: no layer 99 in this model; ...``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpt_model = _skeleton(base)
        tied = getattr(cpt_model.get_output_embeddings(), "weight", None) is cpt_model.get_input_embeddings().weight
        _check(cpt_model, cfg.cpt, cfg.phase_seed(cfg.cpt), "cpt")
        untied = tied and cpt_model.get_output_embeddings().weight is not cpt_model.get_input_embeddings().weight
        sft_model = _skeleton(base)
        if untied and cfg.cpt.method == "lora":  # the merged CPT model has its own head (see untie_embeddings)
            untie_embeddings(sft_model, {n.rsplit(".", 1)[-1] for n, _ in sft_model.named_modules()})
        _check(sft_model, cfg.sft, cfg.phase_seed(cfg.sft), "sft")


def _check(model, phase, seed: int, name: str) -> None:
    try:
        make_trainable(model, phase, seed)
    except Exception as e:  # peft raises its own error types; all are config errors here
        what = f"{name}.select {phase.select!r}" if phase.select else f"{name}.target_modules/layers_to_transform"
        msg = " ".join(str(e).split())
        raise ValueError(
            f"{what} does not fit the model: {msg}; fix --{name}.select / --{name}.target_modules "
            "before anything trains"
        ) from None
