"""Forgetting probed during training: the evaluation's likelihood scores of a fixed probe subset, every N steps.

``ProbeCallback`` (for ``transformers.Trainer``, ``trl.SFTTrainer`` and subclasses, like ``RecorderCallback``)
scores, before training (step 0), at the steps of its schedule and after the last step, a fixed subset of the
evaluation's probes **by likelihood, no generation**, with the evaluation's own scorer
(:func:`layerprobe.evaluation.evaluate.answer_scores`, same prompts, same answer continuations, same batch size)::

    trainer = SFTTrainer(..., callbacks=[ProbeCallback("runs/a", probes, instructions, phase="sft", every=5)])

What each probe step writes into the records table (``layer`` -1, ``block`` ``probe``, ``module`` the probe kind,
``param`` the probe's ``id`` or prompt, ``""`` for the mean over the kind's probes):

- ``probe_logprob``: log p(gold answer | prompt), the sum over the answer's tokens (cloze, held-out cloze: the
  answer continues the prompt as text; QA: the answer is the assistant's text after the chat prompt);
- ``probe_top1``: 1 when every gold answer token is the model's top choice (the mean is the share). For a cloze this
  is the evaluation's likelihood verdict (``eval.cloze_scoring likelihood``); for QA it is the same likelihood verdict
  after the chat prompt, *not* the evaluation's ``qa_acc``, which judges a generated answer;
- ``style_logodds`` (``module`` ``instruction``): log p(styled reference answer) - log p(the same answer plain) on a
  held-out instruction with a ``plain`` twin, as the evaluation's ``style_logodds``.

The subset is the first ``max_per_kind`` probes of each kind (and of the instructions with a ``plain`` twin) in the
order given, so passing the evaluation's probes (``EvalSet.limited``) scores a prefix of what the evaluation
scores, in the same calls: with ``max_per_kind`` 0 (all) the last probe point equals the final evaluation's
likelihood numbers exactly; with fewer probes the batches are narrower and a log-probability may differ in its last
float32 digits (the padding width of a batch changes the matrix products' rounding: on the toy base model, up to
8e-6 nats between one probe per row and batches of 64, no verdict changed).

A probe changes nothing in training: the model runs in eval mode under ``torch.no_grad`` and every module gets its
own training flag back; the torch, CUDA, Python and NumPy random states are restored. Under DDP, FSDP2 and DeepSpeed
every rank runs the same forward passes (sharded parameters need every rank), and rank 0 writes. Rows go through the
phase's :class:`~layerprobe.record.records.RecordWriter` part files, so ``load_records`` reads them with the recorder's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from transformers import TrainerCallback

from layerprobe.evaluation.evaluate import PROBE_KINDS, answer_scores, continuation, truncate_prompt
from layerprobe.record import recorder_setup
from layerprobe.record.records import RecordWriter, drop_rows_after
from layerprobe.record.schedules import Schedule, parse_schedule

BLOCK = "probe"  # the records' block of every probe row
STYLE_KIND = "instruction"  # the module of the style rows (the evaluation's kind of a held-out instruction)
QUANTITIES = ("probe_logprob", "probe_top1", "style_logodds")


def probe_subset(
    probes: Iterable[dict], instructions: Iterable[dict] = (), max_per_kind: int = 0
) -> tuple[list[dict], list[dict]]:
    """The probes scored during training: the first ``max_per_kind`` (0 = all) of each kind in
    :data:`~layerprobe.evaluation.evaluate.PROBE_KINDS`, grouped by kind in that order, and the first ``max_per_kind``
    instructions with both a styled ``answer`` and a ``plain`` twin. Both are prefixes of what the evaluation
    scores when given its probes and instructions."""
    if max_per_kind < 0:
        raise ValueError(f"max_per_kind must be >= 0 (0 = all), got {max_per_kind}")

    def cap(rows):
        return rows[:max_per_kind] if max_per_kind else rows

    probes = list(probes)
    unknown = sorted({str(p.get("kind")) for p in probes} - set(PROBE_KINDS))
    if unknown:
        raise ValueError(f"probes of unknown kind {unknown}: expected kinds {', '.join(PROBE_KINDS)}")
    chosen = [p for kind in PROBE_KINDS for p in cap([q for q in probes if q["kind"] == kind])]
    paired = cap([i for i in instructions if i.get("plain") and i.get("answer")])
    return chosen, paired


def score_probes(
    model,
    tok,
    probes: list[dict],
    instructions: Sequence[dict] = (),
    batch_size: int = 64,
    max_prompt_tokens: int = 512,
) -> list[tuple[str, str, str, float]]:
    """(module, param, quantity, value) rows (see the module's docstring) for ``probes`` and the paired
    ``instructions`` (call :func:`probe_subset` first), scored as :func:`~layerprobe.evaluation.evaluate.evaluate_model`
    scores them: one :func:`~layerprobe.evaluation.evaluate.answer_scores` call per probe kind (QA as a chat
    turn), and one each for the styled and the plain answers of the instructions (prompts cut to
    ``max_prompt_tokens`` tokens). Per-probe rows, then the kind's mean (``param`` ""). Needs gradients off and the
    model in eval mode (:meth:`ProbeCallback.probe` does both)."""
    rows: list[tuple[str, str, str, float]] = []
    for kind in PROBE_KINDS:
        group = [p for p in probes if p["kind"] == kind]
        if not group:
            continue
        chat = kind == "qa"
        answers = [p["answer"] if chat else continuation(p["prompt"], p["answer"]) for p in group]
        scores = answer_scores(model, tok, [p["prompt"] for p in group], answers, chat, batch_size)
        for p, (logprob, top1) in zip(group, scores):
            rows += [(kind, _param(p), "probe_logprob", logprob), (kind, _param(p), "probe_top1", float(top1))]
        rows += [
            (kind, "", "probe_logprob", sum(lp for lp, _ in scores) / len(scores)),
            (kind, "", "probe_top1", sum(t for _, t in scores) / len(scores)),
        ]
    if instructions:
        prompts = [truncate_prompt(tok, i["prompt"], max_prompt_tokens) for i in instructions]
        styled = answer_scores(model, tok, prompts, [i["answer"] for i in instructions], True, batch_size)
        plain = answer_scores(model, tok, prompts, [i["plain"] for i in instructions], True, batch_size)
        odds = [a - b for (a, _), (b, _) in zip(styled, plain)]
        rows += [(STYLE_KIND, _param(i), "style_logodds", v) for i, v in zip(instructions, odds)]
        rows.append((STYLE_KIND, "", "style_logodds", sum(odds) / len(odds)))
    return rows


def _param(p: dict) -> str:
    return str(p.get("id") or p["prompt"])


class ProbeCallback(TrainerCallback):
    """Scores a fixed probe subset by likelihood during training and writes the rows into the records table.

    Args:
        out_dir: run folder; rows go to ``<out_dir>/records/`` as the phase's Parquet parts.
        probes: dicts with ``kind`` (cloze, cloze_heldout, qa), ``prompt``, ``answer`` (optionally ``id``).
        instructions: held-out instructions with ``prompt``, ``answer`` (styled) and ``plain`` (the twin);
            those without a twin are skipped.
        tokenizer: the tokenizer to score with where the Trainer gives the callbacks no ``processing_class`` (a
            Trainer on packed token blocks, as CPT); the Trainer's, when it has one, is the one its model is saved
            with.
        run: run name written in every row (default: the folder's name).
        phase: phase name (``cpt``, ``sft``, ...).
        every: the schedule: an interval in steps, ``"every:N"``, ``"log:K"`` or a ``Callable[[int], bool]``.
        max_per_kind: probes of each kind, and instructions, scored (the first ones; 0 = all).
        batch_size: sequences per forward pass (the evaluation's ``eval.batch_size`` reproduces its numbers).
        max_prompt_tokens: instructions are cut to this many tokens (the evaluation's ``eval.max_prompt_tokens``).
        at_start: also probe before the first step (step 0); a phase resumed from a checkpoint does not.
        flush_every_s: write a Parquet part at least this often.
        after_probe: called as ``after_probe(model, step)`` on rank 0 after each probe step of training (the
            pipeline keeps the trained state there with ``sft.keep_best``:
            :class:`layerprobe.train.keepbest.KeepStates`); its time is its own, not the probes'.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        probes: Iterable[dict] = (),
        instructions: Iterable[dict] = (),
        *,
        tokenizer=None,
        run: str | None = None,
        phase: str = "train",
        every: int | str | Schedule = 10,
        max_per_kind: int = 6,
        batch_size: int = 64,
        max_prompt_tokens: int = 512,
        at_start: bool = True,
        flush_every_s: float = 30.0,
        after_probe: Callable[[object, int], None] | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.run = run or self.out_dir.resolve().name
        self.phase, self.every, self.tokenizer = phase, every, tokenizer
        self.probes, self.instructions = probe_subset(probes, instructions, max_per_kind)
        if not self.probes and not self.instructions:
            raise ValueError(
                "ProbeCallback got nothing to score: expected probes of kind "
                f"{', '.join(PROBE_KINDS)} or instructions with a 'plain' twin"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.max_prompt_tokens = batch_size, max_prompt_tokens
        self.at_start, self.flush_every_s, self.after_probe = at_start, flush_every_s, after_probe
        parse_schedule(every, max_steps=1_000_000)  # a wrong schedule fails here, not at the first step
        self.schedule: Schedule | None = None
        self.writer: RecordWriter | None = None
        self.steps: list[int] = []  # the steps probed so far
        self._seconds = 0.0

    @property
    def seconds(self) -> float:
        """Wall time this callback spent so far (its cost to the run): scoring, and writing its rows."""
        return self._seconds

    def probe(self, model, tok, step: int) -> list[tuple[str, str, str, float]]:
        """Score the subset on ``model`` now (every rank must call it under FSDP2/ZeRO-3) and, on rank 0, add the
        rows at ``step``. Training state is left as it was: training flags, gradients off, random states."""
        import torch

        t = time.perf_counter()
        flags = [(m, m.training) for m in model.modules()]
        saved = _random_state()
        # accelerate wraps a mixed-precision model's forward in autocast and keeps the original: score with the
        # original, in the weights' own precision, as the evaluation does (under bf16 autocast a summed
        # log-probability or log-odds moved by up to 3.8 nats on SmolLM2: figures/dose_response/.../probe_vs_eval.csv)
        wrapped = model.__dict__.get("forward") if "_original_forward" in model.__dict__ else None
        model.eval()
        try:
            if wrapped is not None:
                model.forward = model._original_forward
            with torch.no_grad():
                rows = score_probes(model, tok, self.probes, self.instructions, self.batch_size, self.max_prompt_tokens)
        finally:
            if wrapped is not None:
                model.forward = wrapped
            for m, flag in flags:
                m.training = flag
            _set_random_state(saved)
        if self.writer is not None:
            for module, param, quantity, value in rows:
                self.writer.add(step, -1, BLOCK, module, param, quantity, value)
            self.writer.maybe_flush()
        self.steps.append(step)
        self._seconds += time.perf_counter() - t
        if self.writer is not None and self.after_probe is not None:
            self.after_probe(model, step)
        return rows

    def _tok(self, processing_class):
        tok = processing_class if processing_class is not None else self.tokenizer
        if tok is None:
            raise ValueError(
                "ProbeCallback needs a tokenizer: pass tokenizer= (a Trainer without processing_class, "
                "e.g. CPT on packed blocks, gives the callbacks none)"
            )
        return tok

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        t = time.perf_counter()
        self.schedule = parse_schedule(self.every, state.max_steps or None)
        rank, _ = recorder_setup.rank()
        if rank == 0:
            self.writer = RecordWriter(self.out_dir, self.run, self.phase, rank=rank, flush_every_s=self.flush_every_s)
        self._seconds += time.perf_counter() - t
        if state.global_step:  # resumed: rows a killed attempt wrote after the checkpoint are probed again
            if rank == 0:
                drop_rows_after(self.out_dir, self.phase, rank, state.global_step)
        elif self.at_start:
            self.probe(model, self._tok(processing_class), 0)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.schedule(state.global_step):
            self.probe(model, self._tok(processing_class), state.global_step)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step and (not self.steps or self.steps[-1] != state.global_step):
            self.probe(model, self._tok(processing_class), state.global_step)  # the last step, off the schedule
        self.flush()
        self.writer = None

    def flush(self) -> None:
        """Write the buffered rows now (before a checkpoint, so the records on disk reach its step)."""
        if self.writer is not None:
            t = time.perf_counter()
            self.writer.flush()
            self._seconds += time.perf_counter() - t


def _random_state():
    import random

    import numpy as np
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_random_state(saved) -> None:
    import random

    import numpy as np
    import torch

    py, np_state, cpu, cuda = saved
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
