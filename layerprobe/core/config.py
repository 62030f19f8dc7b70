"""Configs of the pipeline stages: dataclasses with help text, loaded from YAML and overridden by flags.

``TrainConfig`` holds everything ``layerprobe train`` needs; each field's ``help`` is what ``--help`` shows.
Flags are the dotted field paths: ``--cpt.lora_alpha 32 --sft.target_modules q_proj,v_proj``. Its sections are
:mod:`layerprobe.core.config_phase` (a training phase, the recorder, checkpoints) and :mod:`layerprobe.core.config_data`
(the toy world, the data sources, the evaluation); :mod:`layerprobe.core.config_values` turns dataclasses into plain
values and back.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from layerprobe.core.config_data import HARNESS_FIELDS, TOYWORLD, DataConfig, EvalConfig, ToyWorldConfig, style_regex
from layerprobe.core.config_phase import (
    ATTN,
    KEEP_BEST,
    MLP,
    PROBE_FIELDS,
    STORE_FIELDS,
    STORES,
    CheckpointConfig,
    PhaseConfig,
    RecordConfig,
    check_store,
)
from layerprobe.core.config_values import (
    deep_merge,
    field_help,
    field_types,
    from_dict,
    load_yaml,
    set_dotted,
    typed_dict,
)
from layerprobe.core.keys import digest

__all__ = [  # the section configs and the value helpers stay importable from here
    "ATTN",
    "HARNESS_FIELDS",
    "KEEP_BEST",
    "MLP",
    "PROBE_FIELDS",
    "STORES",
    "STORE_FIELDS",
    "TOYWORLD",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "PhaseConfig",
    "RecordConfig",
    "ToyWorldConfig",
    "TrainConfig",
    "add_config_arguments",
    "check_store",
    "config_from_args",
    "dump_yaml",
    "from_dict",
    "load_yaml",
    "resolve",
    "set_dotted",
    "style_regex",
    "wait_passively",
]


@dataclass
class TrainConfig:
    """The whole pipeline: CPT (LoRA or full) -> merge -> SFT (LoRA or full) -> evaluation."""

    model: str = field_help(
        "base model: 'toyworld' (built and cached locally), a local Hugging Face folder, a hub "
        "name or a preset (smollm2-135m)",
        default=TOYWORLD,
    )
    seed: int = field_help("training seed", default=3407)
    record: bool = field_help("record gradient norms, update ratios and drift of both phases", default=False)
    precision: str = field_help(
        "training precision: 'auto' (bf16 autocast where the CPU or GPU supports bfloat16, else "
        "fp32), 'bf16' or 'fp32'; weights, optimizer state and the recorder stay fp32",
        default="auto",
    )
    threads: int = field_help(
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
        out = typed_dict(self)
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


def dump_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def _leaves(cls, prefix: str = ""):
    """(dotted name, type, help) of every leaf field; a field added to a config gets its flag this way."""
    for f in dataclasses.fields(cls):
        t = field_types(cls)[f.name]
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


def resolve(data: dict) -> TrainConfig:
    """A nested dict (missing keys take defaults) -> TrainConfig."""
    defaults = typed_dict(TrainConfig())  # every key, also those to_dict leaves out
    merged = deep_merge(defaults, data, "")
    return from_dict(TrainConfig, merged)
