"""Configs of the pipeline stages: dataclasses with help text, loaded from YAML and overridden by flags.

``TrainConfig`` holds everything ``layerprobe train`` needs; each field's ``help`` is what ``--help`` shows.
Flags are the dotted field paths: ``--cpt.lora_alpha 32 --sft.target_modules q_proj,v_proj``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from layerprobe.core.keys import digest

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
TOYWORLD = "toyworld"
PROBE_FIELDS = ("probe_every", "probe_max")  # PhaseConfig's probing settings (left out of to_dict when off)
KEEP_BEST = ("retention_style",)  # the rules sft.keep_best knows (layerprobe.evaluation.tradeoff.best_step)
HARNESS_FIELDS = ("lm_eval_tasks", "lm_eval_include", "lm_eval_limit")  # EvalConfig's, likewise
STORES = ("auto", "device", "host", "disk")  # recorder.reference_store (layerprobe.record.snapshot)
STORE_FIELDS = ("reference_store", "device_budget_gb", "host_budget_gb")  # RecordConfig's: they change no number


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class PhaseConfig:
    """One training phase (CPT or SFT): LoRA (peft names) or full fine-tuning, and its optimiser."""

    method: str = _help("'lora' (a new adapter) or 'full' (train every weight)", default="lora")
    r: int = _help("LoRA rank", default=32)
    lora_alpha: float = _help("LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)", default=32.0)
    lora_dropout: float = _help("dropout on the LoRA input", default=0.0)
    target_modules: list[str] = _help(
        "modules that get LoRA adapters (peft names; may include embed_tokens, lm_head)",
        default_factory=lambda: ATTN + MLP,
    )
    use_rslora: bool = _help("rank-stabilised LoRA: scale by alpha/sqrt(r)", default=False)
    layers_to_transform: list[int] | None = _help("only adapt these decoder layers (peft); none = all", default=None)
    learning_rate: float = _help("peak learning rate", default=2e-4)
    seed: int | None = _help(
        "this phase's training seed (adapter init, data order); none = the top-level seed. "
        "Two SFT runs of one CPT with different sft.seed give the seed-to-seed null",
        default=None,
    )
    epochs: float = _help("passes over the data (ignored when max_steps > 0)", default=1.0)
    max_steps: int = _help("optimizer steps; > 0 overrides epochs", default=-1)
    batch_size: int = _help("sequences per optimizer step (per device, before accumulation)", default=8)
    grad_accum: int = _help("gradient accumulation steps", default=1)
    max_length: int = _help("tokens per sequence: CPT block size, SFT truncation length", default=512)
    warmup_ratio: float = _help("share of steps with linear warm-up", default=0.0)
    lr_scheduler: str = _help("transformers scheduler name (linear, cosine, constant, ...)", default="linear")
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    max_grad_norm: float = _help("gradient clipping norm (0 = off)", default=1.0)
    group_by_length: bool = _help(
        "SFT only: batch rows of similar length together (less padding), in "
        "shuffled mega-batches (the Trainer's group_by_length sampler)",
        default=False,
    )
    select: str = _help(
        "train only these weights, in the selector grammar ('mlp + head', 'not mlp', 'first:10%', "
        "'random:5%@seed=1 + head', 'layers:0-3'); full: requires_grad mask; lora: replaces "
        "target_modules/layers_to_transform; '' = all weights / target_modules",
        default="",
    )
    replay: float = _help(
        "SFT only: share of the SFT training rows that are CPT documents (replay; loss on all "
        "their tokens), in [0, 1); 0 = off",
        default=0.0,
    )
    l2sp: float = _help(
        "decoupled L2-SP: after each step the change since the phase's start shrinks by "
        "(1 - learning rate * l2sp); for LoRA the change s*B*A does (layerprobe.weights.anchor); 0 = off",
        default=0.0,
    )
    drift_cap: float = _help(
        "cap on every weight's drift_ratio ||W - W_start|| / ||W_start|| after each step "
        "(LoRA: of s*B*A), so no layer drifts further; 0 = off",
        default=0.0,
    )
    probe_every: int = _help(
        "score the evaluation's probes by likelihood every N optimizer steps of this phase "
        "(and before the first and after the last step), into the records (probe_logprob, "
        "probe_top1, style_logodds; layerprobe.train.probes); 0 = off",
        default=0,
    )
    probe_max: int = _help(
        "probes of each kind (cloze, held-out cloze, QA) and held-out instructions scored at each "
        "probe step: the first N of the evaluation's, scored as it scores them (0 = all: the last "
        "probe point then equals the final evaluation's likelihood numbers exactly; fewer may "
        "differ in float rounding, as batches are narrower). The default 6 keeps the probes' cost "
        "on the SmolLM2 cell (50 SFT steps, 1 thread) within 10% of SFT's time when probing every "
        "10 steps; every 5 steps costs more (benchmarks/results/probe_cost_smollm2.json)",
        default=6,
    )
    keep_best: str = _help(
        "SFT only: 'retention_style' keeps the trained state at every probe step (LoRA: the adapter's "
        "weights; full fine-tuning with sft.select: only the trainable weights) in "
        "RUN/sft/kept/step-NNNNNN.safetensors, chooses after SFT the earliest probe step whose style "
        "log-odds reached 90% of the run's final gain (layerprobe.evaluation.tradeoff.best_step), saves that model "
        "as RUN/sft/kept/best/ (with choice.json) and evaluates it in full as the model 'sft_best'. "
        "Needs probe_every > 0 and held-out instructions with a plain twin. Every kept state stays on "
        "disk afterwards (each the size of the trainable weights: one adapter for LoRA; only "
        "retraining SFT makes them again): delete "
        "RUN/sft/kept/step-* yourself once the choice is made. Example: --sft.probe_every 5 "
        "--sft.keep_best retention_style; '' = off",
        default="",
    )

    def __post_init__(self):
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.method == "lora":
            if self.r < 1:
                raise ValueError(f"LoRA rank r must be >= 1, got r={self.r}")
            if not self.target_modules:
                raise ValueError("LoRA needs target_modules, e.g. q_proj,k_proj,v_proj,o_proj; got an empty list")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError(f"give epochs > 0 or max_steps > 0, got epochs={self.epochs}, max_steps={self.max_steps}")
        if min(self.batch_size, self.grad_accum, self.max_length) < 1:
            raise ValueError(
                f"batch_size, grad_accum and max_length must be >= 1, got {self.batch_size}, "
                f"{self.grad_accum}, {self.max_length}"
            )
        if not 0.0 <= self.replay < 1.0:
            raise ValueError(f"replay is the share of SFT rows that are CPT documents, in [0, 1); got {self.replay}")
        if self.l2sp < 0 or self.drift_cap < 0:
            raise ValueError(
                f"l2sp and drift_cap must be >= 0 (0 = off), got l2sp={self.l2sp}, drift_cap={self.drift_cap}"
            )
        if self.probe_every < 0 or self.probe_max < 0:
            raise ValueError(
                f"probe_every and probe_max must be >= 0 (probe_every 0 = off, probe_max 0 = all), got "
                f"probe_every={self.probe_every}, probe_max={self.probe_max}"
            )
        if self.keep_best not in ("", *KEEP_BEST):
            raise ValueError(f"keep_best must be '' (off) or one of {', '.join(KEEP_BEST)}, got {self.keep_best!r}")


@dataclass
class ToyWorldConfig:
    """The built-in toy world: the generated entities and text, and the tiny base model built for it."""

    seed: int = _help("seed of the generated world (names, facts, text)", default=0)
    language: str = _help(
        "language the CPT text, probes and SFT data are written in: 'ja' (the tiny base model's "
        "own) or 'en' (the same world in English, for English real models such as SmolLM2; "
        "its SFT data are chores only, its QA asks two question forms per fact)",
        default="ja",
    )
    base_people: int = _help("people the base model reads about in pretraining (and SFT asks about)", default=120)
    base_orgs: int = _help("organisations in the base model's pretraining text", default=20)
    base_docs_per_entity: int = _help("biographies per base entity in the pretraining text", default=5)
    everyday_docs: int = _help("short everyday documents in the pretraining text", default=150)
    cpt_people: int = _help("people only the CPT text mentions (facts no model knows)", default=24)
    cpt_orgs: int = _help("organisations only the CPT text mentions", default=6)
    cpt_docs_per_entity: int = _help(
        "shuffled, paraphrased biographies per CPT entity (each fact in every "
        "form; many distinct documents teach facts, not documents)",
        default=40,
    )
    sft_examples: int = _help("SFT instructions (answers in ござる style, none about CPT entities)", default=400)
    heldout_instructions: int = _help("held-out instructions for the style evaluation", default=60)
    vocab_size: int = _help("byte-level BPE vocabulary (256 bytes + specials + merges)", default=1024)
    hidden_size: int = _help("width of the tiny Llama base model", default=128)
    num_layers: int = _help("decoder layers of the tiny base model", default=4)
    base_steps: int = _help("pretraining steps of the tiny base model (at cache-build time)", default=200)
    base_lr: float = _help("pretraining learning rate", default=3e-3)
    base_batch_size: int = _help("pretraining sequences per step", default=16)
    block_size: int = _help("pretraining sequence length in tokens", default=128)

    def __post_init__(self):
        small = {
            k: getattr(self, k)
            for k in (
                "base_people",
                "base_orgs",
                "cpt_people",
                "cpt_orgs",
                "base_docs_per_entity",
                "cpt_docs_per_entity",
                "sft_examples",
                "heldout_instructions",
                "hidden_size",
                "num_layers",
                "base_steps",
                "base_batch_size",
                "block_size",
            )
            if getattr(self, k) < 1
        }
        if small:
            raise ValueError(f"toy world sizes must be >= 1, got {small}")
        if self.language not in ("ja", "en"):
            raise ValueError(f"toy.language must be 'ja' or 'en', got {self.language!r}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 (4 attention heads), got {self.hidden_size}")

    BASE_FIELDS = (
        "seed",
        "base_people",
        "base_orgs",
        "base_docs_per_entity",
        "everyday_docs",
        "vocab_size",
        "hidden_size",
        "num_layers",
        "base_steps",
        "base_lr",
        "base_batch_size",
        "block_size",
    )

    def base_key(self) -> dict:
        """The fields the cached base model depends on (the CPT part of the world does not change it)."""
        return {k: getattr(self, k) for k in self.BASE_FIELDS}


@dataclass
class DataConfig:
    """Where the text comes from: 'toyworld' or a local JSON/JSONL/Parquet/text file or a hub dataset name."""

    cpt: str = _help(
        "CPT text: 'toyworld', a file (.jsonl/.json/.parquet: a text field; .txt/.md: one document "
        "a line), a folder of such files, or a hub dataset name",
        default=TOYWORLD,
    )
    cpt_text_field: str = _help("field holding the CPT text in JSON/Parquet data", default="text")
    sft: str = _help(
        "SFT data: 'toyworld', a file or a hub name with messages, prompt/completion or "
        "instruction[/input]/output fields",
        default=TOYWORLD,
    )
    probes: str = _help(
        "knowledge probes: a JSONL/JSON/Parquet file with kind (cloze|qa), prompt, answer; "
        "'' = the toy world's probes when cpt is 'toyworld', else none",
        default="",
    )
    instructions: str = _help(
        "held-out instructions for the style evaluation (a prompt or instruction field); "
        "'' = the toy world's, or rows held out of the SFT data",
        default="",
    )
    heldout: int = _help(
        "rows held out of non-toy SFT data for the style evaluation when no instructions file is given", default=100
    )
    sft_rewrite: str = _help(
        "rewrite the answers of non-toy SFT data: '' (as they are) or 'gozaru' (every "
        "answer ends in ござる, layerprobe.sources.realdata.gozaru_rewrite)",
        default="",
    )
    split: str = _help("split to load from hub datasets", default="train")
    max_cpt_docs: int = _help("use at most this many CPT documents (0 = all)", default=0)
    max_sft_rows: int = _help("use at most this many SFT rows (0 = all)", default=0)
    general_text: str = _help(
        "held-out general text for general forgetting (general_loss): a .txt/.md file or folder "
        "(e.g. ../shared/data/aozora), JSONL/Parquet with a text field; '' = the toy world's "
        "held-out everyday text when cpt is 'toyworld', else none",
        default="",
    )
    mc: str = _help(
        "multiple-choice set for general forgetting (mc_acc): JSON lines with question, choice0..N, "
        "label (e.g. ../shared/data/jcommonsenseqa); '' = none",
        default="",
    )

    def __post_init__(self):
        if self.sft_rewrite not in ("", "gozaru"):
            raise ValueError(f"data.sft_rewrite must be '' or 'gozaru', got {self.sft_rewrite!r}")


def style_regex(pattern: str) -> re.Pattern:
    """``eval.style_pattern`` compiled, or a ValueError that says how to write it."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(
            f"eval.style_pattern must be a valid regular expression, got {pattern!r} ({e}); "
            "escape special characters, e.g. 'ござる' or 'de gozaru\\.'"
        ) from None


@dataclass
class EvalConfig:
    """Evaluation of the CPT model and the SFT model: knowledge retention, style and EOS."""

    style_pattern: str = _help(
        "regular expression whose presence in an answer counts as the style (gozaru rate)", default="ござる"
    )
    max_new_tokens: int = _help(
        "generation budget per answer, in tokens (cloze and QA answers also stop at their "
        "first sentence end; instructions run to EOS, and cut_rate reports the share this "
        "budget cut)",
        default=24,
    )
    max_prompt_tokens: int = _help(
        "held-out instructions are cut to their first N tokens before the chat template (0 = no limit)", default=512
    )
    cloze_scoring: str = _help(
        "'generate' (greedy answer contains the gold answer in its first sentence) or "
        "'likelihood' (every gold token is the top choice: one forward pass, no generation)",
        default="generate",
    )
    batch_size: int = _help("prompts per generation batch", default=64)
    max_probes: int = _help("evaluate at most this many probes of each kind (0 = all)", default=0)
    max_instructions: int = _help("evaluate at most this many held-out instructions (0 = all)", default=0)
    loss_docs: int = _help("CPT documents for cpt_text_loss (0 = all)", default=256)
    base: bool = _help("also evaluate the base model (a row 'base' in the summary)", default=True)
    max_mc: int = _help("multiple-choice questions to score (0 = all)", default=200)
    general_chars: int = _help("characters of held-out general text to score (0 = all)", default=20000)
    lm_eval_tasks: list[str] = _help(
        "lm-evaluation-harness tasks to run on every evaluated model, comma-separated "
        "(hellaswag,arc_easy from the hub when online; tasks of eval.lm_eval_include; "
        "layerprobe_mc: the data.mc set); metrics as lm_eval/<task>/<metric>; needs "
        "pip install 'layerprobe[lm-eval]'",
        default_factory=list,
    )
    lm_eval_include: str = _help("a folder of lm-evaluation-harness task YAMLs (offline and private tasks)", default="")
    lm_eval_limit: int = _help("score at most N documents of each harness task (0 = all)", default=0)

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(
                f"max_new_tokens and batch_size must be >= 1, got {self.max_new_tokens}, {self.batch_size}"
            )
        if self.cloze_scoring not in ("generate", "likelihood"):
            raise ValueError(f"eval.cloze_scoring must be 'generate' or 'likelihood', got {self.cloze_scoring!r}")
        if self.lm_eval_limit < 0:
            raise ValueError(f"eval.lm_eval_limit must be >= 0 (0 = every document), got {self.lm_eval_limit}")
        style_regex(self.style_pattern)


@dataclass
class RecordConfig:
    """What the recorder writes while CPT and SFT train (only with record: true)."""

    grad_every: int = _help("record gradient norms every N optimizer steps", default=1)
    update_every: int = _help("record update ratios every N steps", default=5)
    drift_every: int = _help("record drift from the phase's start every N steps", default=5)
    reference_store: str = _help(
        "where the drift and update references live: 'device' (GPU memory), 'host' (pinned host memory, "
        "asynchronous copies), 'disk' (4 MB pieces through a file) or 'auto' (LoRA factors on the device; else "
        "device, host, disk, the first whose budget the references fit); same numbers in each",
        default="auto",
    )
    device_budget_gb: float = _help(
        "GPU memory 'auto' may give the references (update + drift copies); 0 = a tenth of the GPU's memory",
        default=0.0,
    )
    host_budget_gb: float = _help(
        "host memory 'auto' may give the references; 0 = a quarter of the memory available at the phase's start",
        default=0.0,
    )

    def __post_init__(self):
        check_store(self.reference_store)
        if self.device_budget_gb < 0 or self.host_budget_gb < 0:
            raise ValueError(
                f"recorder.device_budget_gb and recorder.host_budget_gb must be >= 0 (0 = the default share), "
                f"got {self.device_budget_gb} and {self.host_budget_gb}"
            )


@dataclass
class CheckpointConfig:
    """Checkpoints while CPT and SFT train, so a killed run resumes mid-phase (no stage's result depends on them)."""

    minutes: float = _help(
        "save a checkpoint at most every N minutes of training: the most work a kill loses "
        "(0 = none; a killed phase restarts)",
        default=5.0,
    )
    keep: int = _help(
        "checkpoints kept per phase (older ones are removed; all are removed once the phase is done)", default=1
    )

    def __post_init__(self):
        if self.minutes < 0 or self.keep < 1:
            raise ValueError(
                f"checkpoint.minutes must be >= 0 (0 = none) and checkpoint.keep >= 1, got "
                f"minutes={self.minutes}, keep={self.keep}"
            )


@dataclass
class TrainConfig:
    """The whole pipeline: CPT (LoRA or full) -> merge -> SFT (LoRA or full) -> evaluation."""

    model: str = _help(
        "base model: 'toyworld' (built and cached locally), a local Hugging Face folder, a hub "
        "name or a preset (smollm2-135m)",
        default=TOYWORLD,
    )
    seed: int = _help("training seed", default=3407)
    record: bool = _help("record gradient norms, update ratios and drift of both phases", default=False)
    precision: str = _help(
        "training precision: 'auto' (bf16 autocast where the CPU or GPU supports bfloat16, else "
        "fp32), 'bf16' or 'fp32'; weights, optimizer state and the recorder stay fp32",
        default="auto",
    )
    threads: int = _help(
        "torch threads (results under bf16 depend on it); 0 = a sweep worker's assigned cores or OMP_NUM_THREADS, "
        "else the cores not busy now (/proc/stat sampled for 0.3 s)",
        default=0,
    )
    toy: ToyWorldConfig = field(default_factory=ToyWorldConfig, metadata={"help": "the built-in toy world"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data sources"})
    cpt: PhaseConfig = field(
        default_factory=lambda: PhaseConfig(
            lora_alpha=128.0,
            lora_dropout=0.2,
            target_modules=ATTN + MLP + ["embed_tokens", "lm_head"],
            learning_rate=2e-3,
            epochs=3,
            batch_size=8,
            max_length=128,
            warmup_ratio=0.05,
            lr_scheduler="cosine",
        ),
        metadata={"help": "continued pretraining: next-token prediction on raw text"},
    )
    sft: PhaseConfig = field(
        default_factory=lambda: PhaseConfig(
            lora_alpha=8.0,
            lora_dropout=0.2,
            learning_rate=5e-3,
            epochs=2,
            batch_size=8,
            max_length=128,
            warmup_ratio=0.05,
        ),
        metadata={"help": "supervised fine-tuning on instructions, loss on the answers only"},
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation"})
    recorder: RecordConfig = field(default_factory=RecordConfig, metadata={"help": "recording intervals"})
    checkpoint: CheckpointConfig = field(
        default_factory=CheckpointConfig, metadata={"help": "mid-phase checkpoints (resume after a kill)"}
    )

    def __post_init__(self):
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be an integer >= 0 (0 = chosen from the free cores), got {self.threads!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        if self.cpt.replay:
            raise ValueError(
                f"cpt.replay must be 0 (replay mixes CPT text into SFT), got {self.cpt.replay}; set sft.replay instead"
            )
        if self.cpt.keep_best:
            raise ValueError(f"cpt.keep_best must be '' (it chooses an SFT step), got {self.cpt.keep_best!r}")
        if self.sft.keep_best and not self.sft.probe_every:
            raise ValueError(
                f"sft.keep_best {self.sft.keep_best} chooses among the SFT probe steps, but sft.probe_every is 0; "
                "give sft.probe_every N (e.g. 5)"
            )
        if self.sft.keep_best and self.sft.method == "full" and not self.sft.select:
            raise ValueError(
                f"sft.keep_best {self.sft.keep_best} keeps the trainable weights at every probe step: with full "
                "fine-tuning of every weight that is a whole model each time; give sft.select (e.g. 'last:10%') "
                "or use sft.method lora"
            )

    def to_dict(self) -> dict:
        """The config as plain values. A phase that does not probe (``probe_every`` 0) leaves its probe settings
        out, one that keeps no best step its ``keep_best``, and an evaluation without harness tasks its
        ``lm_eval_*`` settings: they change nothing, and configs, hashes and stage fingerprints of runs made before
        they existed stay what they were (``resolve`` fills them back in)."""
        out = _typed_dict(self)
        for phase in ("cpt", "sft"):
            if not out[phase]["probe_every"]:
                for key in PROBE_FIELDS:
                    out[phase].pop(key)
            if not out[phase]["keep_best"]:
                out[phase].pop("keep_best")
        if not out["eval"]["lm_eval_tasks"]:  # likewise the harness settings when no harness task runs
            for key in HARNESS_FIELDS:
                out["eval"].pop(key)
        defaults = RecordConfig()
        for key in STORE_FIELDS:  # and the reference store's settings at their defaults
            if out["recorder"][key] == getattr(defaults, key):
                out["recorder"].pop(key)
        if not out["threads"]:
            out.pop("threads")
        return out

    def phase_seed(self, phase: PhaseConfig) -> int:
        """The training seed of one phase: its own seed when set, else the top-level one."""
        return self.seed if phase.seed is None else phase.seed

    def hash(self) -> str:
        """A short hash of the whole config: a run folder belongs to exactly one config."""
        return digest(self.to_dict(), 12, ensure_ascii=True)


def wait_passively() -> None:
    """Let OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY=PASSIVE``), unless the variable is set
    already. Read once, when torch loads: the CLI and every sweep cell's process call it before that. Measured on
    2 cores with another process keeping them busy, a toy CPT step with 2 spinning threads took 14-27 s against
    0.6-0.8 s on 1 thread, and 0.5-1.0 s with 2 passive threads (``benchmarks/results/wait_policy.json``): a core
    that becomes busy during a run no longer makes it 20x slower. The wait policy changes no number."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def check_store(store: str) -> None:
    """A one-line error for a reference store that is not one of :data:`STORES`."""
    if store not in STORES:
        raise ValueError(
            f"recorder.reference_store must be one of {', '.join(STORES)}, got {store!r}; "
            "e.g. --recorder.reference_store auto"
        )


def _typed_dict(obj) -> dict:
    """``asdict`` with float fields as floats (``epochs=3`` and ``epochs=3.0`` are one config)."""
    hints = _hints(type(obj))
    out: dict = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = _typed_dict(v)
        elif hints[f.name] is float and isinstance(v, int) and not isinstance(v, bool):
            out[f.name] = float(v)
        else:
            out[f.name] = list(v) if isinstance(v, (list, tuple)) else v
    return out


# -- building configs from dicts, YAML and flags ---------------------------------------------------------------


def _hints(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys (with the valid ones named)."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping for {where or cls.__name__}, got {type(data).__name__}: {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"unknown config key {where + unknown[0]!r}; valid keys here: {', '.join(names)}")
    hints = _hints(cls)
    kwargs = {}
    for k, v in data.items():
        t = hints[k]
        kwargs[k] = from_dict(t, v, f"{where}{k}.") if dataclasses.is_dataclass(t) else _coerce(v, t, where + k)
    return cls(**kwargs)


def _coerce(value, t, key: str):
    """Coerce a YAML or flag value to the field type ``t``; strings are parsed (lists comma-separated)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (item,) = typing.get_args(t)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} expects a list (comma-separated on the command line), got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if t is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} expects true or false, got {value!r}")
    if t in (int, float):
        try:
            out = t(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} expects a number ({t.__name__}), got {value!r}") from None
        if t is int and isinstance(value, float) and value != out:
            raise ValueError(f"{key} expects an integer, got {value!r}")
        return out
    if t is str:
        return str(value)
    raise ValueError(f"{key}: unsupported field type {t}")


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"config file {str(p)!r} not found; pass a YAML file such as experiments/study_a/config.yaml"
        )
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a YAML mapping of config keys, got {type(data).__name__}")
    return data


def dump_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def _leaves(cls, prefix: str = ""):
    """(dotted name, type, help) of every leaf field; a field added to a config gets its flag this way."""
    for f in dataclasses.fields(cls):
        t = _hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            yield from _leaves(t, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, t, f.metadata.get("help", "")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "''"
    return "none" if value is None else "''" if value == "" else str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus one ``--section.key VALUE`` flag per config field (with its help and default)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config (flags override its values)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    defaults = TrainConfig()
    for name, t, h in _leaves(TrainConfig):
        h = h.replace("%", "%%")  # argparse formats help strings with %
        section = name.split(".")[0] if "." in name else "general"
        if section not in groups:
            groups[section] = parser.add_argument_group(f"config: {section}")
        g = groups[section]
        if t is bool and section == "general":  # --record / --no-record
            g.add_argument(
                f"--{name}",
                dest=f"cfg:{name}",
                action="store_const",
                const="true",
                default=None,
                help=f"{h} (default: {_show(_get(defaults, name))})",
            )
            g.add_argument(
                f"--no-{name}", dest=f"cfg:{name}", action="store_const", const="false", help=argparse.SUPPRESS
            )
            continue
        g.add_argument(
            f"--{name}",
            dest=f"cfg:{name}",
            metavar="V",
            default=None,
            help=f"{h} (default: {_show(_get(defaults, name))})",
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """YAML (``--config``) + ``--section.key`` flags -> a checked TrainConfig."""
    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    for key, value in vars(args).items():
        if key.startswith("cfg:") and value is not None:
            set_dotted(data, key[4:], value)
    return resolve(data)


def set_dotted(data: dict, dotted: str, value) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted`` = ``"a.b"`` (a copy of ``value``), making the sections that
    are missing; a section that holds a value instead of a mapping is an error that names it."""
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p, {}), dict):
            raise ValueError(f"cannot set {dotted!r}: {p!r} is a value ({node[p]!r}), not a section")
        node = node.setdefault(p, {})
    node[leaf] = copy.deepcopy(value)


def resolve(data: dict) -> TrainConfig:
    """A nested dict (missing keys take defaults) -> TrainConfig."""
    defaults = _typed_dict(TrainConfig())  # every key, also those to_dict leaves out
    merged = _deep_merge(defaults, data, "")
    return from_dict(TrainConfig, merged)


def _deep_merge(base: dict, over: dict, where: str) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"unknown config key {where + k!r}; valid keys here: {', '.join(base)}")
        out[k] = _deep_merge(base[k], v, f"{where}{k}.") if isinstance(base[k], dict) and isinstance(v, dict) else v
    return out
