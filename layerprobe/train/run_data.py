"""A run's data: CPT documents, SFT rows and the evaluation set, from the toy world or the files the config names
(fields checked), with the limits and rewrites of ``data.*``."""

from __future__ import annotations

from typing import Any

from layerprobe.core.config import TrainConfig
from layerprobe.core.config_data import TOYWORLD
from layerprobe.evaluation.evaluate import EvalSet
from layerprobe.sources import data as D
from layerprobe.sources.realdata import gozaru_rewrite, load_jcommonsenseqa
from layerprobe.sources.toyworld import toy_data
from layerprobe.train.stage_table import PipelineData


def load_data(cfg: TrainConfig) -> PipelineData:
    """CPT documents, SFT rows and the evaluation set, from the toy world or files (fields checked)."""

    d = cfg.data
    toy: Any = None  # the toy world's data, when the config reads it
    if TOYWORLD in (d.cpt, d.sft):
        toy = toy_data(cfg.toy)
    cpt_docs = toy.cpt_docs if d.cpt == TOYWORLD else D.load_cpt_texts(d.cpt, d.cpt_text_field, d.split)
    if d.max_cpt_docs > 0:
        cpt_docs = cpt_docs[: d.max_cpt_docs]
    if d.sft == TOYWORLD:
        sft_rows, instructions = toy.sft_rows, toy.instructions
    else:
        sft_rows = D.load_sft_rows(d.sft, d.split)
        instructions = []
        if not d.instructions and d.heldout > 0:
            if len(sft_rows) <= d.heldout:
                raise ValueError(
                    f"SFT data {d.sft!r} has {len(sft_rows)} rows, not more than data.heldout="
                    f"{d.heldout} held out for the style evaluation; lower data.heldout or give "
                    "data.instructions"
                )
            instructions = [
                {"prompt": r["prompt"][-1]["content"], "answer": r["completion"][-1]["content"]}
                for r in sft_rows[-d.heldout :]
            ]
            sft_rows = sft_rows[: -d.heldout]
    if d.max_sft_rows > 0:
        sft_rows = sft_rows[: d.max_sft_rows]
    if d.sft != TOYWORLD and d.sft_rewrite == "gozaru":
        sft_rows = [
            {**r, "completion": [{**m, "content": gozaru_rewrite(m["content"])} for m in r["completion"]]}
            for r in sft_rows
        ]
        instructions = [{**r, "answer": gozaru_rewrite(r["answer"]), "plain": r["answer"]} for r in instructions]
    if d.instructions:
        instructions = D.load_instructions(d.instructions, d.split)
    if d.probes:
        probes = D.load_probes(d.probes, d.split)
    else:
        probes = toy.probes if d.cpt == TOYWORLD else []
    desc = (
        f"CPT {len(cpt_docs)} documents ({d.cpt}), SFT {len(sft_rows)} rows ({d.sft}), "
        f"{len(probes)} probes, {len(instructions)} held-out instructions"
    )
    if d.general_text:
        general = D.load_cpt_texts(d.general_text, d.cpt_text_field, d.split)
    else:
        general = toy.general_docs if d.cpt == TOYWORLD else []
    mc = []
    if d.mc:
        mc = load_jcommonsenseqa(d.mc, n=cfg.eval.max_mc or None)
    if general or mc:
        desc += f", {len(general)} general-text documents, {len(mc)} multiple-choice questions"
    return PipelineData(cpt_docs, sft_rows, EvalSet(probes, instructions, cpt_docs, general, mc), desc)
