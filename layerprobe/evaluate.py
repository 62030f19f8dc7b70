"""Evaluation: knowledge retention (cloze, QA, loss on CPT text), style rate and EOS rate.

Generation is batched, greedy and deterministic, with left padding. An answer is correct when its
normalised text (NFKC, lower case, no spaces or punctuation) contains the normalised gold answer; a cloze
continuation is cut at its first sentence end before that check, so an answer that only turns up in a
later, rambling sentence does not count.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

from layerprobe.config import EvalConfig

METRICS = ("cloze_acc", "qa_acc", "cpt_text_loss", "gozaru_rate", "eos_rate", "n_probes")
OPTIONAL_METRICS = ("general_loss", "mc_acc")  # general forgetting, when the data has held-out text / a MC set
_SENTENCE_END = re.compile(r"[。．！？!?\n]")


def normalize(text: str) -> str:
    """NFKC, lower case, without whitespace, punctuation or symbols."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith(("P", "Z", "S", "C")))


def contains_answer(prediction: str, gold: str) -> bool:
    g = normalize(gold)
    return bool(g) and g in normalize(prediction)


def first_sentence(text: str) -> str:
    m = _SENTENCE_END.search(text)
    return text[: m.start()] if m else text


@dataclass
class EvalSet:
    """What a model is evaluated on: probes (kind, prompt, answer), held-out instructions, CPT documents."""

    probes: list[dict]
    instructions: list[dict]
    cpt_docs: list[str]
    general_docs: list[str] = field(default_factory=list)
    mc_rows: list[dict] = field(default_factory=list)

    def limited(self, cfg: EvalConfig) -> "EvalSet":
        def cap(rows, n):
            return rows[:n] if n > 0 else rows

        probes = cap([p for p in self.probes if p["kind"] == "cloze"], cfg.max_probes) + \
            cap([p for p in self.probes if p["kind"] == "qa"], cfg.max_probes)
        general, chars = [], 0
        for doc in self.general_docs:  # the first general_chars characters, whole documents or a cut last one
            if cfg.general_chars and chars >= cfg.general_chars:
                break
            general.append(doc[: cfg.general_chars - chars] if cfg.general_chars else doc)
            chars += len(general[-1])
        return EvalSet(probes, cap(self.instructions, cfg.max_instructions), cap(self.cpt_docs, cfg.loss_docs),
                       general, cap(self.mc_rows, cfg.max_mc))


def eos_ids(model, tok) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def chat_prompt(tok, user: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def generate(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int, chat: bool,
             progress=None) -> list[tuple[str, bool]]:
    """Greedy answers to ``prompts`` (as chat turns when ``chat``): (text up to EOS, whether EOS came)."""
    import torch

    stops = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(stops))
    side, tok.padding_side = tok.padding_side, "left"
    out: list[tuple[str, bool]] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            texts = [chat_prompt(tok, p) for p in chunk] if chat else chunk
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not chat)
            enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                     eos_token_id=sorted(stops), pad_token_id=pad)
            for row in gen[:, enc["input_ids"].shape[1]:].tolist():
                cut = next((j for j, t in enumerate(row) if t in stops), None)
                answer = row if cut is None else row[:cut]
                out.append((tok.decode(answer, skip_special_tokens=True), cut is not None))
            if progress is not None:
                progress.update(len(chunk))
    finally:
        tok.padding_side = side
    return out


def text_loss(model, tok, docs: list[str], max_length: int, batch_size: int) -> float:
    """Mean next-token loss per token over ``docs`` (each truncated to ``max_length`` tokens)."""
    import torch

    if not docs:
        return math.nan
    total, count = 0.0, 0
    side, tok.padding_side = tok.padding_side, "right"
    try:
        for i in range(0, len(docs), batch_size):
            enc = tok(docs[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length)
            ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((labels != -100).sum())
    finally:
        tok.padding_side = side
    return total / max(count, 1)


def evaluate_model(model, tok, data: EvalSet, cfg: EvalConfig, max_length: int = 512,
                   progress: bool = False) -> tuple[dict, list[dict]]:
    """Metrics (:data:`METRICS`) and one row per generated answer for ``model``."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(0)
    model.eval()
    data = data.limited(cfg)
    style = re.compile(cfg.style_pattern)
    cloze = [p for p in data.probes if p["kind"] == "cloze"]
    qa = [p for p in data.probes if p["kind"] == "qa"]
    bar = tqdm(total=len(cloze) + len(qa) + len(data.instructions), desc="  generate", unit="answer",
               disable=not progress, leave=False)
    rows: list[dict] = []
    try:
        cloze_out = generate(model, tok, [p["prompt"] for p in cloze], cfg.max_new_tokens, cfg.batch_size, False, bar)
        qa_out = generate(model, tok, [p["prompt"] for p in qa], cfg.max_new_tokens, cfg.batch_size, True, bar)
        ins_out = generate(model, tok, [p["prompt"] for p in data.instructions], cfg.max_new_tokens,
                           cfg.batch_size, True, bar)
    finally:
        bar.close()
    for p, (text, eos) in zip(cloze, cloze_out):
        rows.append({**p, "output": text, "eos": eos, "correct": contains_answer(first_sentence(text), p["answer"])})
    for p, (text, eos) in zip(qa, qa_out):
        rows.append({**p, "output": text, "eos": eos, "correct": contains_answer(text, p["answer"])})
    for p, (text, eos) in zip(data.instructions, ins_out):
        rows.append({"kind": "instruction", "prompt": p["prompt"], "answer": p.get("answer", ""), "output": text,
                     "eos": eos, "correct": bool(style.search(text))})

    def mean(xs):
        return sum(xs) / len(xs) if xs else math.nan

    chat_rows = [r for r in rows if r["kind"] != "cloze"]
    metrics = {
        "cloze_acc": mean([r["correct"] for r in rows if r["kind"] == "cloze"]),
        "qa_acc": mean([r["correct"] for r in rows if r["kind"] == "qa"]),
        "cpt_text_loss": text_loss(model, tok, data.cpt_docs, max_length, cfg.batch_size),
        "gozaru_rate": mean([r["correct"] for r in rows if r["kind"] == "instruction"]),
        "eos_rate": mean([r["eos"] for r in chat_rows]),
        "n_probes": len(cloze) + len(qa),
    }
    if data.general_docs or data.mc_rows:
        from layerprobe.forgetting import heldout_loss, mc_accuracy

        if data.general_docs:
            metrics["general_loss"] = heldout_loss(model, tok, data.general_docs, max_length=max_length)["loss"]
        if data.mc_rows:
            metrics["mc_acc"] = mc_accuracy(model, tok, data.mc_rows, batch_size=cfg.batch_size)["acc"]
    return metrics, rows
