"""Configs of what a run reads and how it is measured: the built-in toy world (``ToyWorldConfig``), the data
sources (``DataConfig``) and the evaluation (``EvalConfig``). Part of :class:`layerprobe.core.config.TrainConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from layerprobe.core.config_values import field_help

TOYWORLD = "toyworld"
HARNESS_FIELDS = ("lm_eval_tasks", "lm_eval_include", "lm_eval_limit")  # EvalConfig's (left out of to_dict when off)


@dataclass
class ToyWorldConfig:
    """The built-in toy world: the generated entities and text, and the tiny base model built for it."""

    seed: int = field_help("seed of the generated world (names, facts, text)", default=0)
    language: str = field_help(
        "language the CPT text, probes and SFT data are written in: 'ja' (the tiny base model's "
        "own) or 'en' (the same world in English, for English real models such as SmolLM2; "
        "its SFT data are chores only, its QA asks two question forms per fact)",
        default="ja",
    )
    base_people: int = field_help("people the base model reads about in pretraining (and SFT asks about)", default=120)
    base_orgs: int = field_help("organisations in the base model's pretraining text", default=20)
    base_docs_per_entity: int = field_help("biographies per base entity in the pretraining text", default=5)
    everyday_docs: int = field_help("short everyday documents in the pretraining text", default=150)
    cpt_people: int = field_help("people only the CPT text mentions (facts no model knows)", default=24)
    cpt_orgs: int = field_help("organisations only the CPT text mentions", default=6)
    cpt_docs_per_entity: int = field_help(
        "shuffled, paraphrased biographies per CPT entity (each fact in every "
        "form; many distinct documents teach facts, not documents)",
        default=40,
    )
    sft_examples: int = field_help("SFT instructions (answers in ござる style, none about CPT entities)", default=400)
    heldout_instructions: int = field_help("held-out instructions for the style evaluation", default=60)
    vocab_size: int = field_help("byte-level BPE vocabulary (256 bytes + specials + merges)", default=1024)
    hidden_size: int = field_help("width of the tiny Llama base model", default=128)
    num_layers: int = field_help("decoder layers of the tiny base model", default=4)
    base_steps: int = field_help("pretraining steps of the tiny base model (at cache-build time)", default=200)
    base_lr: float = field_help("pretraining learning rate", default=3e-3)
    base_batch_size: int = field_help("pretraining sequences per step", default=16)
    block_size: int = field_help("pretraining sequence length in tokens", default=128)

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

    cpt: str = field_help(
        "CPT text: 'toyworld', a file (.jsonl/.json/.parquet: a text field; .txt/.md: one document "
        "a line), a folder of such files, or a hub dataset name",
        default=TOYWORLD,
    )
    cpt_text_field: str = field_help("field holding the CPT text in JSON/Parquet data", default="text")
    sft: str = field_help(
        "SFT data: 'toyworld', a file or a hub name with messages, prompt/completion or "
        "instruction[/input]/output fields",
        default=TOYWORLD,
    )
    probes: str = field_help(
        "knowledge probes: a JSONL/JSON/Parquet file with kind (cloze|qa), prompt, answer; "
        "'' = the toy world's probes when cpt is 'toyworld', else none",
        default="",
    )
    instructions: str = field_help(
        "held-out instructions for the style evaluation (a prompt or instruction field); "
        "'' = the toy world's, or rows held out of the SFT data",
        default="",
    )
    heldout: int = field_help(
        "rows held out of non-toy SFT data for the style evaluation when no instructions file is given", default=100
    )
    sft_rewrite: str = field_help(
        "rewrite the answers of non-toy SFT data: '' (as they are) or 'gozaru' (every "
        "answer ends in ござる, layerprobe.sources.realdata.gozaru_rewrite)",
        default="",
    )
    split: str = field_help("split to load from hub datasets", default="train")
    max_cpt_docs: int = field_help("use at most this many CPT documents (0 = all)", default=0)
    max_sft_rows: int = field_help("use at most this many SFT rows (0 = all)", default=0)
    general_text: str = field_help(
        "held-out general text for general forgetting (general_loss): a .txt/.md file or folder "
        "(e.g. ../shared/data/aozora), JSONL/Parquet with a text field; '' = the toy world's "
        "held-out everyday text when cpt is 'toyworld', else none",
        default="",
    )
    mc: str = field_help(
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

    style_pattern: str = field_help(
        "regular expression whose presence in an answer counts as the style (gozaru rate)", default="ござる"
    )
    max_new_tokens: int = field_help(
        "generation budget per answer, in tokens (cloze and QA answers also stop at their "
        "first sentence end; instructions run to EOS, and cut_rate reports the share this "
        "budget cut)",
        default=24,
    )
    max_prompt_tokens: int = field_help(
        "held-out instructions are cut to their first N tokens before the chat template (0 = no limit)", default=512
    )
    cloze_scoring: str = field_help(
        "'generate' (greedy answer contains the gold answer in its first sentence) or "
        "'likelihood' (every gold token is the top choice: one forward pass, no generation)",
        default="generate",
    )
    batch_size: int = field_help("prompts per generation batch", default=64)
    max_probes: int = field_help("evaluate at most this many probes of each kind (0 = all)", default=0)
    max_instructions: int = field_help("evaluate at most this many held-out instructions (0 = all)", default=0)
    loss_docs: int = field_help("CPT documents for cpt_text_loss (0 = all)", default=256)
    base: bool = field_help("also evaluate the base model (a row 'base' in the summary)", default=True)
    max_mc: int = field_help("multiple-choice questions to score (0 = all)", default=200)
    general_chars: int = field_help("characters of held-out general text to score (0 = all)", default=20000)
    lm_eval_tasks: list[str] = field_help(
        "lm-evaluation-harness tasks to run on every evaluated model, comma-separated "
        "(hellaswag,arc_easy from the hub when online; tasks of eval.lm_eval_include; "
        "layerprobe_mc: the data.mc set); metrics as lm_eval/<task>/<metric>; needs "
        "pip install 'layerprobe[lm-eval]'",
        default_factory=list,
    )
    lm_eval_include: str = field_help(
        "a folder of lm-evaluation-harness task YAMLs (offline and private tasks)", default=""
    )
    lm_eval_limit: int = field_help("score at most N documents of each harness task (0 = all)", default=0)

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
