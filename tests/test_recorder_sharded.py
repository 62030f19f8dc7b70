"""FSDP2 and DeepSpeed ZeRO under torchrun (2 CPU processes, gloo): records equal a single process's within 1e-5
with clipping active, for full fine-tuning and LoRA; the recorder issues one all_reduce per step; each rank's
reference files hold its own shard only; rank 0 alone writes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerprobe.record.records import load_records

SCRIPT = Path(__file__).with_name("sharded_train.py")
ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
KEYS = ["step", "layer", "block", "module", "param", "quantity"]
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not found")
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed (pip install -e '.[deepspeed]')"
)
# the single-process run each sharded mode is compared with
REFERENCE = {
    "trainer": "trainer",
    "zero2": "trainer",
    "zero3": "trainer",
    "trainer-lora": "trainer-lora",
    "zero2-lora": "trainer-lora",
    "loop": "loop",
    "loop-lora": "loop-lora",
}


def _run(cmd, port=29541):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MASTER_PORT": str(port)}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Single-process references, run once per kind."""
    done = {}

    def get(kind):
        if kind not in done:
            out = tmp_path_factory.mktemp(f"single-{kind}")
            _run([sys.executable, str(SCRIPT), str(out), kind])
            done[kind] = load_records(out).set_index(KEYS).value.sort_index()
        return done[kind]

    return get


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        "trainer",
        "trainer-lora",
        "loop",
        "loop-lora",
        pytest.param("zero2", marks=needs_deepspeed),
        pytest.param("zero3", marks=needs_deepspeed),
        pytest.param("zero2-lora", marks=needs_deepspeed),
    ],
)
def test_sharded_records_equal_single_process(tmp_path, single, mode):
    _run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29541", str(SCRIPT), str(tmp_path), mode])
    assert not list((tmp_path / "records").glob("*-r1-*")), "rank 1 must not write records"
    a, b = single(REFERENCE[mode]), load_records(tmp_path).set_index(KEYS).value.sort_index()
    assert a.index.equals(b.index), a.index.symmetric_difference(b.index)[:10]
    quantities = set(a.index.get_level_values("quantity"))
    assert {"grad_norm", "update_ratio", "drift_ratio", "weight_norm", "clip_factor"} <= quantities
    assert (a.xs("clip_factor", level="quantity") < 1).all(), "the test must exercise clipping"
    assert ((a - b).abs() <= 1e-5 * a.abs().clip(lower=1.0)).all(), (a - b).abs().sort_values().tail()
    if mode.endswith("lora"):  # effective-weight rows of adapted modules, not only the factors
        assert "model.layers.0.self_attn.q_proj.weight" in set(
            a.xs("update_ratio", level="quantity").index.get_level_values("param")
        )
    meta = json.loads((tmp_path / "records" / "meta-cpt.json").read_text())
    expected = {"trainer": "fsdp2", "loop": "fsdp2", "zero2": "zero1/2", "zero3": "zero3"}[mode.split("-")[0]]
    assert meta["parameters"] == expected and meta["grad_norm_clip"] == "pre"
    assert meta["sharded_over"] == (None if expected == "zero1/2" else 2)
    if mode.startswith("loop"):
        for rank in (0, 1):
            steps = json.loads((tmp_path / f"collectives-r{rank}.json").read_text())
            # one all_reduce per step (gradient norms + clipping + the previous step's weight quantities) and at close
            assert [s["before"] for s in steps] == [{"c10d.allreduce_": 1}] * 4 and all(s["after"] == 0 for s in steps)
            sizes = json.loads((tmp_path / f"sizes-r{rank}.json").read_text())
            assert sizes["reference"] == sizes["update"] == sizes["local"] < sizes["whole"]


REFUSED = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from conftest import make_tiny_llama
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard
from layerprobe.record.recorder import Recorder
torch.distributed.init_process_group("gloo", rank=0, world_size=1)
model = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]))
fully_shard(model)
try:
    Recorder(model, {out!r})
except ValueError as e:
    print("REFUSED:", e)
"""


@pytest.mark.slow
def test_transposed_lora_under_fsdp2_is_refused_in_one_line(tmp_path):
    code = REFUSED.format(tests=str(Path(__file__).parent), out=str(tmp_path))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29543",
    }
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    line = [x for x in r.stdout.splitlines() if x.startswith("REFUSED:")]
    assert len(line) == 1, r.stdout + r.stderr[-2000:]
    assert "embed_tokens" in line[0] and "leave embed_tokens/lm_head out of target_modules" in line[0]
