"""The built-in toy world: a generated world of fictional facts, a byte-level BPE tokenizer and a tiny base model.

``ensure_base(cfg)`` builds (once) and returns the cached base model folder; ``toy_data(cfg)`` returns the
CPT text, SFT examples, held-out instructions and knowledge probes.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerprobe.core.config_data import ToyWorldConfig
from layerprobe.sources.toyworld import world as W
from layerprobe.sources.toyworld.base import base_dir, ensure_base, make_world

__all__ = ["ToyData", "base_dir", "ensure_base", "make_world", "toy_data"]


@dataclass
class ToyData:
    cpt_docs: list[str]
    sft_rows: list[dict]  # conversational prompt/completion
    instructions: list[dict]  # held-out: prompt, answer (ござる style), plain (the same answer without it)
    probes: list[dict]  # kind (cloze|cloze_heldout|qa), prompt, answer, entity, relation
    general_docs: list[str]  # held-out everyday text, for general forgetting


def toy_data(cfg: ToyWorldConfig) -> ToyData:
    world, lang = make_world(cfg), cfg.language
    train, heldout = W.instructions(world, cfg.sft_examples, cfg.heldout_instructions, cfg.seed, lang)
    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "completion": [{"role": "assistant", "content": r["completion"]}],
        }
        for r in train
    ]
    return ToyData(
        W.cpt_corpus(world, cfg.cpt_docs_per_entity, cfg.seed, lang),
        rows,
        heldout,
        W.probes(world, lang),
        W.general_heldout(100, cfg.seed, lang),
    )
