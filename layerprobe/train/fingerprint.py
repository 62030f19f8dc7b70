"""Stage fingerprints: a stage reruns only when what it reads changes (ideas 12 of STYLE.md).

Each stage's fingerprint hashes its own inputs and the fingerprint of the stage before it, so a change reaches
exactly the stages downstream of it:

    cpt    the base model's content, the CPT documents' content and the config without the sft, eval, data, toy
           and model entries (their effect on CPT is the base model's and the documents' content)
    merge  nothing of its own: the CPT's fingerprint
    sft    the SFT rows' content (and the replayed CPT documents' with sft.replay) and the config without the cpt,
           eval, data, toy and model entries
    eval   the evaluation set's content, eval.*, cpt.max_length (the loss's block size), what the harness tasks
           read (with eval.lm_eval_tasks) and the rest of the config without the phases, data, toy and model entries

A config entry added later counts for every stage unless it is named here: a stale result is worse than a rerun.
Run-time settings that change no result (checkpoint.*, where the recorder keeps its references) count for none.
Never imports torch.
"""

from __future__ import annotations

from layerprobe.core.config_phase import STORE_FIELDS
from layerprobe.core.keys import digest
from layerprobe.evaluation.harness import data_digest

# Config entries that change no stage's result: how often to checkpoint is not an input.
NOT_INPUTS = ("checkpoint",)
# Entries whose effect reaches a stage only through content hashed separately (data, base model) or through the
# stage before it (the chain).
_EXCLUDED = {
    "cpt": ("sft", "eval", "data", "toy", "model"),
    "merge": None,  # only the CPT's fingerprint
    "sft": ("cpt", "eval", "data", "toy", "model"),
    "eval": ("cpt", "sft", "data", "toy", "model", "record", "recorder"),
}


def _config_part(config: dict, stage: str) -> dict:
    excluded = _EXCLUDED[stage]
    if excluded is None:
        return {}
    out = {k: v for k, v in config.items() if k not in excluded and k not in NOT_INPUTS}
    if "recorder" in out:  # where the references are kept changes no number
        out["recorder"] = {k: v for k, v in out["recorder"].items() if k not in STORE_FIELDS}
    return out


def stage_inputs(cfg, data, base_hash: str) -> dict[str, dict]:
    """What each stage reads, as a JSON-able dict per stage (config entries and content hashes)."""
    config = cfg.to_dict()
    sft_data = {"sft_rows": digest(data.sft_rows)}
    if cfg.sft.replay:
        sft_data["replay_docs"] = digest(data.cpt_docs)
    return {
        "cpt": {**_config_part(config, "cpt"), "base_model": base_hash, "cpt_docs": digest(data.cpt_docs)},
        "merge": {},
        "sft": {**_config_part(config, "sft"), **sft_data},
        "eval": {
            **_config_part(config, "eval"),
            "cpt.max_length": cfg.cpt.max_length,
            "eval_set": digest(data.eval_set),
            **_harness_data(cfg),
        },
    }


def _harness_data(cfg) -> dict:
    """What the lm-evaluation-harness tasks read (task files, data.mc), when the evaluation runs any."""
    if not cfg.eval.lm_eval_tasks:
        return {}
    return {"lm_eval_data": digest(data_digest(cfg.eval, cfg.data.mc))}


def chain(inputs: dict[str, dict]) -> dict[str, str]:
    """Each stage's fingerprint: its inputs and the fingerprint before it (stages in pipeline order)."""
    out, previous = {}, ""
    for stage, own in inputs.items():
        previous = out[stage] = digest({"before": previous, "inputs": own})
    return out


def changed_inputs(old: dict | None, new: dict) -> list[str]:
    """The names of the inputs that differ between two stage_inputs entries ('a.b: 1 -> 2' for config values,
    'cpt_docs: content changed' for hashed content)."""
    if old is None:
        return []
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in changed_inputs(a, b)]
        elif a != b:
            hashed = key in ("base_model", "cpt_docs", "sft_rows", "replay_docs", "eval_set", "lm_eval_data")
            out.append(f"{key}: content changed" if hashed and a and b else f"{key}: {a!r} -> {b!r}")
    return out
