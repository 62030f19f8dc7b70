"""Configs of a training phase (CPT or SFT): how it trains (``PhaseConfig``: LoRA or full, the optimiser, the
probes, keep_best), what the recorder writes (``RecordConfig``) and its mid-phase checkpoints (``CheckpointConfig``).
Part of :class:`layerprobe.core.config.TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerprobe.core.config_values import field_help

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
PROBE_FIELDS = ("probe_every", "probe_max")  # PhaseConfig's probing settings (left out of to_dict when off)
KEEP_BEST = ("retention_style",)  # the rules sft.keep_best knows (layerprobe.evaluation.tradeoff.best_step)
STORES = ("auto", "device", "host", "disk")  # recorder.reference_store (layerprobe.record.snapshot)
STORE_FIELDS = ("reference_store", "device_budget_gb", "host_budget_gb")  # RecordConfig's: they change no number


@dataclass
class PhaseConfig:
    """One training phase (CPT or SFT): LoRA (peft names) or full fine-tuning, and its optimiser."""

    method: str = field_help("'lora' (a new adapter) or 'full' (train every weight)", default="lora")
    r: int = field_help("LoRA rank", default=32)
    lora_alpha: float = field_help(
        "LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA)", default=32.0
    )
    lora_dropout: float = field_help("dropout on the LoRA input", default=0.0)
    target_modules: list[str] = field_help(
        "modules that get LoRA adapters (peft names; may include embed_tokens, lm_head)",
        default_factory=lambda: ATTN + MLP,
    )
    use_rslora: bool = field_help("rank-stabilised LoRA: scale by alpha/sqrt(r)", default=False)
    layers_to_transform: list[int] | None = field_help(
        "only adapt these decoder layers (peft); none = all", default=None
    )
    learning_rate: float = field_help("peak learning rate", default=2e-4)
    seed: int | None = field_help(
        "this phase's training seed (adapter init, data order); none = the top-level seed. "
        "Two SFT runs of one CPT with different sft.seed give the seed-to-seed null",
        default=None,
    )
    epochs: float = field_help("passes over the data (ignored when max_steps > 0)", default=1.0)
    max_steps: int = field_help("optimizer steps; > 0 overrides epochs", default=-1)
    batch_size: int = field_help("sequences per optimizer step (per device, before accumulation)", default=8)
    grad_accum: int = field_help("gradient accumulation steps", default=1)
    max_length: int = field_help("tokens per sequence: CPT block size, SFT truncation length", default=512)
    warmup_ratio: float = field_help("share of steps with linear warm-up", default=0.0)
    lr_scheduler: str = field_help("transformers scheduler name (linear, cosine, constant, ...)", default="linear")
    weight_decay: float = field_help("AdamW weight decay", default=0.0)
    max_grad_norm: float = field_help("gradient clipping norm (0 = off)", default=1.0)
    group_by_length: bool = field_help(
        "SFT only: batch rows of similar length together (less padding), in "
        "shuffled mega-batches (the Trainer's group_by_length sampler)",
        default=False,
    )
    select: str = field_help(
        "train only these weights, in the selector grammar ('mlp + head', 'not mlp', 'first:10%', "
        "'random:5%@seed=1 + head', 'layers:0-3'); full: requires_grad mask; lora: replaces "
        "target_modules/layers_to_transform; '' = all weights / target_modules",
        default="",
    )
    replay: float = field_help(
        "SFT only: share of the SFT training rows that are CPT documents (replay; loss on all "
        "their tokens), in [0, 1); 0 = off",
        default=0.0,
    )
    l2sp: float = field_help(
        "decoupled L2-SP: after each step the change since the phase's start shrinks by "
        "(1 - learning rate * l2sp); for LoRA the change s*B*A does (layerprobe.weights.anchor); 0 = off",
        default=0.0,
    )
    drift_cap: float = field_help(
        "cap on every weight's drift_ratio ||W - W_start|| / ||W_start|| after each step "
        "(LoRA: of s*B*A), so no layer drifts further; 0 = off",
        default=0.0,
    )
    probe_every: int = field_help(
        "score the evaluation's probes by likelihood every N optimizer steps of this phase "
        "(and before the first and after the last step), into the records (probe_logprob, "
        "probe_top1, style_logodds; layerprobe.train.probes); 0 = off",
        default=0,
    )
    probe_max: int = field_help(
        "probes of each kind (cloze, held-out cloze, QA) and held-out instructions scored at each "
        "probe step: the first N of the evaluation's, scored as it scores them (0 = all: the last "
        "probe point then equals the final evaluation's likelihood numbers exactly; fewer may "
        "differ in float rounding, as batches are narrower). The default 6 keeps the probes' cost "
        "on the SmolLM2 cell (50 SFT steps, 1 thread) within 10% of SFT's time when probing every "
        "10 steps; every 5 steps costs more (benchmarks/results/probe_cost_smollm2.json)",
        default=6,
    )
    keep_best: str = field_help(
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
class RecordConfig:
    """What the recorder writes while CPT and SFT train (only with record: true)."""

    grad_every: int = field_help("record gradient norms every N optimizer steps", default=1)
    update_every: int = field_help("record update ratios every N steps", default=5)
    drift_every: int = field_help("record drift from the phase's start every N steps", default=5)
    reference_store: str = field_help(
        "where the drift and update references live: 'device' (GPU memory), 'host' (pinned host memory, "
        "asynchronous copies), 'disk' (4 MB pieces through a file) or 'auto' (LoRA factors on the device; else "
        "device, host, disk, the first whose budget the references fit); same numbers in each",
        default="auto",
    )
    device_budget_gb: float = field_help(
        "GPU memory 'auto' may give the references (update + drift copies); 0 = a tenth of the GPU's memory",
        default=0.0,
    )
    host_budget_gb: float = field_help(
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

    minutes: float = field_help(
        "save a checkpoint at most every N minutes of training: the most work a kill loses "
        "(0 = none; a killed phase restarts)",
        default=5.0,
    )
    keep: int = field_help(
        "checkpoints kept per phase (older ones are removed; all are removed once the phase is done)", default=1
    )

    def __post_init__(self):
        if self.minutes < 0 or self.keep < 1:
            raise ValueError(
                f"checkpoint.minutes must be >= 0 (0 = none) and checkpoint.keep >= 1, got "
                f"minutes={self.minutes}, keep={self.keep}"
            )


def check_store(store: str) -> None:
    """A one-line error for a reference store that is not one of :data:`STORES`."""
    if store not in STORES:
        raise ValueError(
            f"recorder.reference_store must be one of {', '.join(STORES)}, got {store!r}; "
            "e.g. --recorder.reference_store auto"
        )
