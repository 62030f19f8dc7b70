"""Greedy generation for the evaluation: chat prompts, prompt budgets, batched left-padded decoding that stops at
EOS (and, for short answers, at the first sentence end)."""

from __future__ import annotations

STOP_STRINGS = ["。", ".", "！", "？", "!", "?", "\n"]


def eos_ids(model, tok) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


def chat_prompt(tok, user: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def truncate_prompt(tok, text: str, budget: int) -> str:
    """``text`` cut to its first ``budget`` tokens (0 = no limit)."""
    if budget <= 0:
        return text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= budget else tok.decode(ids[:budget])


def generate(
    model,
    tok,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    chat: bool,
    progress=None,
    stop_at_sentence: bool = False,
    timing: dict | None = None,
    by_length: bool = True,
) -> list[tuple[str, bool]]:
    """Greedy answers to ``prompts`` (as chat turns when ``chat``): (text up to EOS, whether EOS came).

    Prompts run in batches of similar length (longest first), so little padding is computed; answers come back
    in the order of ``prompts``. With ``stop_at_sentence`` a row stops at its first sentence end as well.
    ``timing`` (a dict) accumulates ``generate_seconds`` and ``generated_tokens`` (up to each row's stop).
    """
    import time

    import torch

    if not prompts:
        return []
    stops = eos_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(stops))
    side, tok.padding_side = tok.padding_side, "left"
    texts = [chat_prompt(tok, p) for p in prompts] if chat else list(prompts)
    encoded = tok(texts, add_special_tokens=not chat)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i])) if by_length else list(range(len(texts)))
    out: list[tuple[str, bool] | None] = [None] * len(texts)
    extra = {"stop_strings": STOP_STRINGS, "tokenizer": tok} if stop_at_sentence else {}
    t0, produced = time.perf_counter(), 0
    try:
        for i in range(0, len(order), batch_size):
            chunk = order[i : i + batch_size]
            enc = tok.pad({"input_ids": [encoded[j] for j in chunk]}, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    eos_token_id=sorted(stops),
                    pad_token_id=pad,
                    **extra,
                )
            for j, row in zip(chunk, gen[:, enc["input_ids"].shape[1] :].tolist()):
                out[j], n = _answer(tok, row, stops, pad)
                produced += n
            if progress is not None:
                progress.update(len(chunk))
    finally:
        tok.padding_side = side
    if timing is not None:
        timing["generate_seconds"] = timing.get("generate_seconds", 0.0) + time.perf_counter() - t0
        timing["generated_tokens"] = timing.get("generated_tokens", 0) + produced
    return [o for o in out if o is not None]  # every row was answered


def _answer(tok, row: list[int], stops: set[int], pad: int) -> tuple[tuple[str, bool], int]:
    """One generated row cut at its first stop or pad token: ((text, whether EOS came), tokens produced)."""
    cut = next((k for k, t in enumerate(row) if t in stops or t == pad), None)
    answer = row if cut is None else row[:cut]
    return (tok.decode(answer, skip_special_tokens=True), cut is not None and row[cut] in stops), len(answer) + (
        cut is not None
    )
