"""General forgetting: multiple-choice accuracy by log-likelihood, and held-out loss over fixed windows.

Both run the model in eval mode without gradients, batch deterministically, and give the same numbers for
any batch size or padding side (tests check this against a one-sequence-at-a-time reference).
The lm-evaluation-harness task ``layerprobe_mc`` (:mod:`layerprobe.evaluation.tasks`) scores the same rows with the same
split and gives the same accuracy (tests/test_harness.py); this scorer stays because the harness is an optional
extra and ``mc_acc`` must be measurable on the base install.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

DEFAULT_PROMPT = "質問: {question}\n答え: "
_CHOICE = re.compile(r"choice(\d+)")


def _n_choices(rows: Sequence[dict]) -> int:
    if not rows:
        raise ValueError("expected at least one multiple-choice row, got none")
    counts = {sum(1 for k in r if _CHOICE.fullmatch(k)) for r in rows}
    if len(counts) != 1 or min(counts) < 2:
        raise ValueError(f"expected every row to have the same choice0..choiceN (N >= 1), got counts {sorted(counts)}")
    k = counts.pop()
    for i, r in enumerate(rows):
        if "question" not in r or any(f"choice{j}" not in r for j in range(k)):
            raise ValueError(f"expected question and choice0..choice{k - 1} in row {i}, got keys {sorted(r)}")
    return k


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, as lm-evaluation-harness splits them.

    Trailing whitespace of the context moves to the continuation (BPE tokenizers glue a space to the next
    word); the continuation is what the whole string tokenizes to after the context's own tokens, so every
    choice of a question is scored after the same context tokens.
    """
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    if not ctx:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("expected a non-empty prompt or a tokenizer with a BOS/EOS token to condition on")
        ctx, whole = [start], [start] + whole
    cont = whole[len(ctx) :]
    if not cont:
        raise ValueError(f"choice {continuation!r} tokenizes to no tokens after the prompt {context!r}")
    return ctx, cont


def _score(
    model, sequences: list[tuple[list[int], int]], batch_size: int, padding_side: str, pad_id: int
) -> list[tuple[float, int]]:
    """(sum of log p, token count) of the last ``n`` tokens of each sequence given the tokens before them."""
    import torch

    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"expected padding_side 'left' or 'right', got {padding_side!r}")
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))  # similar lengths share a batch
    out: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                width = max(len(sequences[i][0]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                targets = torch.zeros((len(idx), width), dtype=torch.bool)
                for row, i in enumerate(idx):
                    seq, n = sequences[i]
                    start = width - len(seq) if padding_side == "left" else 0
                    ids[row, start : start + len(seq)] = torch.tensor(seq)
                    mask[row, start : start + len(seq)] = 1
                    targets[row, start + len(seq) - n : start + len(seq)] = True
                positions = (mask.cumsum(1) - 1).clamp(min=0)
                logits = model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
                ).logits
                scored = targets[:, 1:]  # position t predicts token t + 1
                picked = logits[:, :-1][scored.to(device)].float()  # only the scored positions: (n, vocab)
                token_logp = (
                    torch.log_softmax(picked, dim=-1)
                    .gather(-1, ids[:, 1:][scored].to(device).unsqueeze(-1))
                    .squeeze(-1)
                    .double()
                    .cpu()
                )
                counts = scored.sum(1).tolist()
                for i, part, n in zip(idx, token_logp.split(counts), counts):
                    out[i] = (float(part.sum()), n)
    finally:
        model.train(was_training)
    return out


def choice_logprobs(
    model,
    tokenizer,
    rows: Sequence[dict],
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 8,
    padding_side: str = "right",
) -> list[list[tuple[float, int]]]:
    """Per row, per choice: (sum of log p(choice tokens | prompt), number of choice tokens).

    ``prompt`` is formatted with the row's fields (``{question}``, and any other key such as ``{choice0}``).
    """
    k = _n_choices(rows)
    sequences = []
    for r in rows:
        try:
            context = prompt.format(**r)
        except KeyError as e:
            raise ValueError(
                f"prompt {prompt!r} names the field {e.args[0]!r}, which the rows lack (they have {sorted(r)})"
            ) from e
        for j in range(k):
            ctx, cont = _encode_pair(tokenizer, context, str(r[f"choice{j}"]))
            sequences.append((ctx + cont, len(cont)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    scores = _score(model, sequences, batch_size, padding_side, pad_id)
    return [scores[i * k : (i + 1) * k] for i in range(len(rows))]


def mc_accuracy(
    model,
    tokenizer,
    rows: Sequence[dict],
    batch_size: int = 8,
    normalize: str = "sum",
    prompt: str = DEFAULT_PROMPT,
    padding_side: str = "right",
) -> dict:
    """Multiple-choice accuracy: the predicted choice has the highest log-likelihood after the prompt.

    Rows carry ``question``, ``choice0..choiceN`` and an int ``label`` (JCommonsenseQA's form).
    ``normalize="sum"`` scores a choice by the sum of its tokens' log p, ``"mean"`` by the per-token mean
    (less biased towards short choices); both accuracies are returned, ``acc`` is the chosen one. Ties go to
    the lower index.

    Returns ``{"acc", "acc_sum", "acc_mean", "n", "n_choices", "chance", "normalize", "gold_logprob"}``;
    ``gold_logprob`` is the mean summed log p of the right answers (a smoother signal of forgetting than acc).
    """
    if normalize not in ("sum", "mean"):
        raise ValueError(f"expected normalize 'sum' or 'mean', got {normalize!r}")
    scores = choice_logprobs(model, tokenizer, rows, prompt=prompt, batch_size=batch_size, padding_side=padding_side)
    k = len(scores[0])
    labels = []
    for i, r in enumerate(rows):
        label = r.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < k:
            raise ValueError(f"expected an int label in 0..{k - 1} in row {i}, got {label!r}")
        labels.append(label)

    def argmax(values: list[float]) -> int:
        return max(range(len(values)), key=lambda j: (values[j], -j))

    right_sum = sum(argmax([s for s, _ in row]) == y for row, y in zip(scores, labels))
    right_mean = sum(argmax([s / n for s, n in row]) == y for row, y in zip(scores, labels))
    n = len(rows)
    result = {
        "acc_sum": right_sum / n,
        "acc_mean": right_mean / n,
        "n": n,
        "n_choices": k,
        "chance": 1 / k,
        "normalize": normalize,
        "gold_logprob": sum(row[y][0] for row, y in zip(scores, labels)) / n,
    }
    result["acc"] = result[f"acc_{normalize}"]
    return result


def heldout_loss(
    model,
    tokenizer,
    texts: Sequence[str],
    max_length: int = 512,
    stride: int | None = None,
    batch_size: int = 4,
    add_special_tokens: bool = True,
) -> dict:
    """Mean next-token NLL over held-out texts, each cut into fixed windows of ``max_length`` tokens.

    Window starts are ``0, stride, 2*stride, ...`` (``stride=None``: ``max_length``, no overlap). Each token is
    scored once, in the first window that holds it with at least one token before it, conditioned on the
    tokens of that window before it; with ``stride < max_length`` every token after the first window has at
    least ``max_length - stride`` tokens of context. Texts are tokenized separately; no window spans two.

    Returns ``{"loss", "ppl", "n_tokens", "n_windows"}`` (loss in nats per token).
    """
    stride = max_length if stride is None else stride
    if max_length < 2 or not 1 <= stride <= max_length:
        raise ValueError(
            f"expected max_length >= 2 and 1 <= stride <= max_length, got max_length={max_length}, stride={stride}"
        )
    if isinstance(texts, str):
        raise ValueError("expected a list of texts, got one str; wrap it: [text]")
    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
        scored_until = 1  # token 0 of a text has nothing before it
        for begin in range(0, max(len(ids) - 1, 1), stride):
            end = min(begin + max_length, len(ids))
            first = max(scored_until, begin + 1)
            if end > first:
                windows.append((ids[begin:end], end - first))
                scored_until = end
            if end == len(ids):
                break
    if not windows:
        raise ValueError("expected held-out texts with at least 2 tokens, got none")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    scores = _score(model, windows, batch_size, "right", pad_id)
    total = -sum(s for s, _ in scores)
    n_tokens = sum(n for _, n in scores)
    loss = total / n_tokens
    return {"loss": loss, "ppl": math.exp(loss), "n_tokens": n_tokens, "n_windows": len(windows)}
