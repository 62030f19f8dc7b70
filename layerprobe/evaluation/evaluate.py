"""Evaluation: knowledge retention (cloze, QA, loss on CPT text), style and EOS.

Generation is batched (length-sorted), greedy and deterministic, with left padding. An answer is correct when its
normalised text (NFKC, lower case, no spaces or punctuation) contains the normalised gold answer. Cloze and QA
answers are judged on their first sentence, and their generation stops there (``。``, ``.``, ``!``, ``?``,
newline or EOS). Cloze probes can instead be scored by likelihood (``eval.cloze_scoring``): correct when every
gold answer token is the model's top choice after the prompt, which is exactly when greedy generation starts
with the answer, at the cost of one forward pass instead of a generation.

Knowledge, on three probe classes (``kind``): ``cloze`` (a CPT sentence cut before the answer: the prompt and
answer occur verbatim in the CPT text), ``cloze_heldout`` (the same fact in a sentence form the CPT text never uses,
cut the same way and scored exactly like ``cloze``) and ``qa`` (a question, answered in a chat turn):

- ``cloze_acc``, ``cloze_heldout_acc``, ``qa_acc``: the share answered correctly;
- ``cloze_margin``, ``cloze_heldout_margin``: mean log-probability margin of the gold answer over the best other
  answer of its relation (:func:`answer_margins`): continuous, so it still moves where the accuracy is at its
  ceiling or floor;
- ``cloze_floor``, ``qa_floor``: what guessing gets (:func:`guessing_floor`); they describe the probe set, not the
  model, so they are the same for every model evaluated on it.

Style, on held-out instructions answered to EOS within ``max_new_tokens``:

- ``gozaru_rate``: the style pattern anywhere in the answer;
- ``gozaru_first``: the pattern at the end of the answer's first sentence (not biased by the budget, which only
  has to reach one sentence end);
- ``style_logodds``: mean of log p(styled reference answer) - log p(the same answer plain), teacher-forced (needs
  a ``plain`` field in the instructions: the toy world has it, ``data.sft_rewrite: gozaru`` keeps the original);
- ``cut_rate``: the share of answers the budget cut before EOS.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from layerprobe.core.config_data import EvalConfig, style_regex
from layerprobe.evaluation.generation import chat_prompt, generate, truncate_prompt

METRICS = (
    "cloze_acc",
    "qa_acc",
    "cpt_text_loss",
    "gozaru_rate",
    "gozaru_first",
    "eos_rate",
    "cut_rate",
    "n_probes",
    "cloze_margin",
    "cloze_floor",
    "qa_floor",
)
# general forgetting (held-out text / a MC set), the likelihood style score and the held-out cloze, when the data
# allow them
OPTIONAL_METRICS = ("style_logodds", "general_loss", "mc_acc", "cloze_heldout_acc", "cloze_heldout_margin")
PROBE_KINDS = ("cloze", "cloze_heldout", "qa")  # eval.max_probes caps each kind
CLOZE_KINDS = ("cloze", "cloze_heldout")  # scored alike: by eval.cloze_scoring, with a likelihood margin
# The version of what evaluate_model computes. The evaluation cache's key (layerprobe.evaluation.evalservice) holds a
# digest of this module's source, so any change here, this number included, is a miss; kept as the metrics' version.
EVAL_VERSION = 2
_SENTENCE_END = re.compile(r"[。．！？!?\n]|\.(?!\d)")  # a period, but not the one inside 3.5


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


def style_at_first_end(text: str, style: re.Pattern) -> bool:
    """Whether the style pattern ends the answer's first sentence (trailing spaces allowed)."""
    head = first_sentence(text).rstrip()
    return any(m.end() == len(head) for m in style.finditer(head))


@dataclass
class EvalSet:
    """What a model is evaluated on: probes (kind, prompt, answer), held-out instructions, CPT documents."""

    probes: list[dict]
    instructions: list[dict]
    cpt_docs: list[str]
    general_docs: list[str] = field(default_factory=list)
    mc_rows: list[dict] = field(default_factory=list)

    def limited(self, cfg: EvalConfig) -> EvalSet:
        """The set trimmed by ``cfg``'s limits; a set already trimmed by the same limits is returned as it is."""
        limits = (cfg.max_probes, cfg.max_instructions, cfg.loss_docs, cfg.general_chars, cfg.max_mc)
        if getattr(self, "_limits", None) == limits:
            return self

        def cap(rows, n):
            return rows[:n] if n > 0 else rows

        probes = [p for kind in PROBE_KINDS for p in cap([q for q in self.probes if q["kind"] == kind], cfg.max_probes)]
        general, chars = [], 0
        for doc in self.general_docs:  # the first general_chars characters, whole documents or a cut last one
            if cfg.general_chars and chars >= cfg.general_chars:
                break
            general.append(doc[: cfg.general_chars - chars] if cfg.general_chars else doc)
            chars += len(general[-1])
        out = EvalSet(
            probes,
            cap(self.instructions, cfg.max_instructions),
            cap(self.cpt_docs, cfg.loss_docs),
            general,
            cap(self.mc_rows, cfg.max_mc),
        )
        object.__setattr__(out, "_limits", limits)  # not a field: the set's digest stays that of its rows
        return out


def continuation(prompt: str, answer: str) -> str:
    """The answer as it follows the prompt in text: after a space where two words of a spaced script meet."""
    return f" {answer}" if prompt[-1:].isascii() and prompt[-1:].strip() and answer[:1].isascii() else answer


def answer_scores(
    model, tok, prompts: list[str], answers: list[str], chat: bool, batch_size: int
) -> list[tuple[float, bool]]:
    """Teacher-forced (sum of log p(answer tokens | prompt), whether every answer token is the top choice).

    The answer's tokens are those the tokenizer gives ``prompt + answer`` beyond the prompt's own tokens (for a
    chat, the answer is the assistant's text right after the generation prompt). A greedy decoder starts with
    the answer exactly when the second value is true.
    """
    import torch

    if not prompts:
        return []
    heads = [chat_prompt(tok, p) for p in prompts] if chat else list(prompts)
    rows = []
    for head, answer in zip(heads, answers):
        h = tok(head, add_special_tokens=not chat)["input_ids"]
        full = tok(head + answer, add_special_tokens=not chat)["input_ids"]
        n = next((i for i, (a, b) in enumerate(zip(h, full)) if a != b), min(len(h), len(full)))
        rows.append((full, n))  # the answer starts where the tokens of head and head + answer part
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[tuple[float, bool]] = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(len(f) for f, _ in chunk)
        ids = torch.tensor([f + [pad] * (width - len(f)) for f, _ in chunk], device=model.device)
        mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f, _ in chunk], device=model.device)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for b, (full, n) in enumerate(chunk):
            target = torch.tensor(full[n:], device=model.device)
            pred = logp[b, n - 1 : len(full) - 1]
            out.append((float(pred.gather(1, target[:, None]).sum()), bool((pred.argmax(-1) == target).all())))
    return out


def guessing_floor(probes: list[dict]) -> float:
    """The share of ``probes`` answered right by a guesser that always gives its relation's most common answer.

    Probes are grouped by ``relation`` (probes without one form one group: the guesser then gives the set's most
    common answer) and answers compared normalised (:func:`normalize`). A property of the probe set, not of a
    model; NaN without probes. The toy world's held-out clozes state the same facts as its clozes, so their floor
    is the clozes' one (``cloze_floor``) and has no metric of its own.
    """
    if not probes:
        return math.nan
    groups: dict = {}
    for p in probes:
        groups.setdefault(p.get("relation"), Counter())[normalize(p["answer"])] += 1
    return sum(max(c.values()) for c in groups.values()) / len(probes)


def answer_margins(model, tok, probes: list[dict], gold: list[float], batch_size: int) -> list[float]:
    """Per probe: log p(gold answer | prompt) - max over the other answers of its relation of log p(answer | prompt).

    ``gold`` holds the gold answers' log-probabilities (:func:`answer_scores` of the same probes). The other answers
    are the distinct (normalised) gold answers of the other ``probes`` with the same ``relation``, each teacher-forced
    after the probe's prompt as text would continue it (:func:`continuation`), all in batches of ``batch_size``.
    Each is the *sum* of its tokens' log-probabilities, as :func:`answer_scores` returns it, so answers of
    different token lengths are compared as whole strings (a longer answer pays for each token). Positive: the
    model prefers the gold answer to every alternative. NaN for a probe without a relation or whose relation has
    no other answer.
    """
    answers: dict = {}  # relation -> {normalised answer: the first answer given so}
    for p in probes:
        if p.get("relation") is not None:
            answers.setdefault(p["relation"], {}).setdefault(normalize(p["answer"]), p["answer"])
    pairs = [
        (i, other)
        for i, p in enumerate(probes)
        if p.get("relation") is not None
        for key, other in answers[p["relation"]].items()
        if key != normalize(p["answer"])
    ]
    scores = answer_scores(
        model,
        tok,
        [probes[i]["prompt"] for i, _ in pairs],
        [continuation(probes[i]["prompt"], a) for i, a in pairs],
        False,
        batch_size,
    )
    best = [-math.inf] * len(probes)
    for (i, _), (logprob, _) in zip(pairs, scores):
        best[i] = max(best[i], logprob)
    return [g - b if b > -math.inf else math.nan for g, b in zip(gold, best)]


def text_loss(model, tok, docs: list[str], max_length: int, batch_size: int) -> float:
    """Mean next-token loss per token over ``docs`` (each truncated to ``max_length`` tokens)."""
    import torch

    if not docs:
        return math.nan
    total, count = 0.0, 0
    side, tok.padding_side = tok.padding_side, "right"
    try:
        for i in range(0, len(docs), batch_size):
            enc = tok(
                docs[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=max_length
            )
            ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
            )
            total += float(loss)
            count += int((labels != -100).sum())
    finally:
        tok.padding_side = side
    return total / max(count, 1)


def evaluate_model(
    model,
    tok,
    data: EvalSet,
    cfg: EvalConfig,
    max_length: int = 512,
    progress: bool = False,
    timing: dict | None = None,
) -> tuple[dict, list[dict]]:
    """Metrics (:data:`METRICS`, and :data:`OPTIONAL_METRICS` the data allow) and one row per probe/answer.

    Held-out cloze probes are scored exactly like the clozes, in calls of their own (so the clozes' numbers do
    not depend on them); ``n_probes`` counts the cloze and QA probes only, as it did before they existed. Cloze
    rows (both kinds) carry ``logprob``, ``greedy`` and ``margin`` (:func:`answer_margins`).
    ``timing`` (a dict), when given, receives the generation time and token count (see :func:`generate`)."""
    import torch

    torch.manual_seed(0)
    model.eval()
    data = data.limited(cfg)
    clozes = {kind: [p for p in data.probes if p["kind"] == kind] for kind in CLOZE_KINDS}
    qa = [p for p in data.probes if p["kind"] == "qa"]
    instructions = [
        {**p, "prompt": truncate_prompt(tok, p["prompt"], cfg.max_prompt_tokens)} for p in data.instructions
    ]
    scores, cloze_out, qa_out, ins_out = _answers(model, tok, clozes, qa, instructions, cfg, progress, timing)
    rows: list[dict] = []
    for kind, cloze in clozes.items():
        margins = answer_margins(model, tok, cloze, [lp for lp, _ in scores[kind]], cfg.batch_size)
        rows += _cloze_rows(cloze, scores[kind], margins, cloze_out[kind])
    for p, (text, eos) in zip(qa, qa_out):
        rows.append({**p, "output": text, "eos": eos, "correct": contains_answer(first_sentence(text), p["answer"])})
    rows += _instruction_rows(data.instructions, instructions, ins_out, style_regex(cfg.style_pattern))
    metrics = _metrics(rows, clozes, qa, text_loss(model, tok, data.cpt_docs, max_length, cfg.batch_size))
    answered = [r for r in rows if r["kind"] == "instruction"]
    paired = [(r, p) for r, p in zip(answered, instructions) if p.get("plain") and r["answer"]]
    if paired:
        metrics["style_logodds"] = _style_logodds(model, tok, paired, cfg.batch_size)
    if data.general_docs or data.mc_rows:
        from layerprobe.evaluation.forgetting import heldout_loss, mc_accuracy

        if data.general_docs:
            metrics["general_loss"] = heldout_loss(model, tok, data.general_docs, max_length=max_length)["loss"]
        if data.mc_rows:
            metrics["mc_acc"] = mc_accuracy(model, tok, data.mc_rows, batch_size=cfg.batch_size)["acc"]
    return metrics, rows


def _answers(model, tok, clozes: dict, qa: list, instructions: list, cfg: EvalConfig, progress: bool, timing):
    """Teacher-forced cloze scores per kind, generated cloze answers per kind (None unless ``cloze_scoring`` is
    generate), QA answers and instruction answers."""
    from tqdm.auto import tqdm

    generate_clozes = cfg.cloze_scoring == "generate"
    generated = len(qa) + len(instructions) + (sum(map(len, clozes.values())) if generate_clozes else 0)
    bar = tqdm(total=generated, desc="  generate", unit="answer", disable=not progress, leave=False)
    scores, cloze_out = {}, {}
    n, batch = cfg.max_new_tokens, cfg.batch_size
    try:
        for kind, cloze in clozes.items():
            prompts = [p["prompt"] for p in cloze]
            answers = [continuation(p["prompt"], p["answer"]) for p in cloze]
            scores[kind] = answer_scores(model, tok, prompts, answers, False, batch)
            cloze_out[kind] = (
                generate(model, tok, prompts, n, batch, False, bar, stop_at_sentence=True, timing=timing)
                if generate_clozes
                else None
            )
        qa_prompts = [p["prompt"] for p in qa]
        qa_out = generate(model, tok, qa_prompts, n, batch, True, bar, stop_at_sentence=True, timing=timing)
        ins_out = generate(model, tok, [p["prompt"] for p in instructions], n, batch, True, bar, timing=timing)
    finally:
        bar.close()
    return scores, cloze_out, qa_out, ins_out


def _cloze_rows(cloze: list[dict], scores: list, margins: list[float], generated: list | None) -> list[dict]:
    """One row per cloze probe: its likelihood verdict and margin, and its generated answer when there is one."""
    rows = []
    for i, (p, (logprob, greedy)) in enumerate(zip(cloze, scores)):
        row = {**p, "logprob": logprob, "greedy": greedy, "margin": margins[i]}
        if generated is None:
            row.update(output="", eos=False, correct=greedy)
        else:
            text, eos = generated[i]
            row.update(output=text, eos=eos, correct=contains_answer(first_sentence(text), p["answer"]))
        rows.append(row)
    return rows


def _instruction_rows(originals: list[dict], shown: list[dict], answers: list, style) -> list[dict]:
    """One row per held-out instruction: its answer, EOS, the style anywhere and at the first sentence end."""
    return [
        {
            "kind": "instruction",
            "prompt": p["prompt"],
            "answer": p.get("answer", ""),
            "output": text,
            "eos": eos,
            "correct": bool(style.search(text)),
            "first": style_at_first_end(text, style),
            "prompt_cut": q["prompt"] != p["prompt"],
        }
        for p, q, (text, eos) in zip(originals, shown, answers)
    ]


def _style_logodds(model, tok, paired: list[tuple[dict, dict]], batch_size: int) -> float:
    """Per (row, instruction) with a plain twin: log p(styled answer) - log p(plain answer), into the row; the mean."""
    prompts = [p["prompt"] for _, p in paired]
    styled = answer_scores(model, tok, prompts, [r["answer"] for r, _ in paired], True, batch_size)
    plain = answer_scores(model, tok, prompts, [p["plain"] for _, p in paired], True, batch_size)
    for (r, _), (a, _), (b, _) in zip(paired, styled, plain):
        r["style_logodds"] = a - b
    return _mean([r["style_logodds"] for r, _ in paired])


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _metrics(rows: list[dict], clozes: dict, qa: list, cpt_text_loss: float) -> dict:
    """The shares and means the rows give, beside the CPT-text loss (the style log-odds and general text come
    after)."""

    def of(kind, key):
        return [r[key] for r in rows if r["kind"] == kind and not (key == "margin" and math.isnan(r[key]))]

    answered = [r for r in rows if r["kind"] == "instruction"]
    metrics = {
        "cloze_acc": _mean(of("cloze", "correct")),
        "qa_acc": _mean(of("qa", "correct")),
        "cpt_text_loss": cpt_text_loss,
        "gozaru_rate": _mean([r["correct"] for r in answered]),
        "gozaru_first": _mean([r["first"] for r in answered]),
        "eos_rate": _mean([r["eos"] for r in answered]),
        "cut_rate": _mean([not r["eos"] for r in answered]),
        "n_probes": len(clozes["cloze"]) + len(qa),
        "cloze_margin": _mean(of("cloze", "margin")),
    }
    if clozes["cloze_heldout"]:
        metrics.update(
            cloze_heldout_acc=_mean(of("cloze_heldout", "correct")),
            cloze_heldout_margin=_mean(of("cloze_heldout", "margin")),
        )
    metrics.update(cloze_floor=guessing_floor(clozes["cloze"]), qa_floor=guessing_floor(qa))
    return metrics
