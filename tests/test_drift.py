"""layerprobe.weights.drift: whole-model and per-block drift from the records, against the weights themselves."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_llama

from layerprobe.core.names import parse_name
from layerprobe.record.recorder import Recorder
from layerprobe.weights.drift import drift_over_steps, module_norms, phase_drift


def _train(model, out, steps=3, snapshots=None):
    """Train ``steps`` SGD steps under a recorder (drift every 2 steps); ``snapshots`` (a dict) gets the effective
    weights after each step."""
    rec = Recorder(model, out, phase="sft", drift_every=2)  # the last step (3) is not due: close() records it
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    torch.manual_seed(1)
    for step in range(1, steps + 1):
        ids = torch.randint(0, 64, (2, 12))
        model(input_ids=ids, labels=ids).loss.backward()
        rec.before_step()
        opt.step()
        rec.after_step()
        opt.zero_grad()
        if snapshots is not None:
            snapshots[step] = _effective(model)
    rec.close()


def _effective(model) -> dict[str, torch.Tensor]:
    """Every weight as the model computes with it (LoRA: W0 + s * B @ A), by canonical name, tied weights once."""
    out, seen = {}, set()
    for name, p in model.named_parameters():
        pn = parse_name(name)
        if pn.lora or id(p) in seen:
            continue
        seen.add(id(p))
        out[pn.canonical] = p.detach().double().clone()
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            dw = mod.scaling["default"] * (mod.lora_B["default"].weight @ mod.lora_A["default"].weight)
            out[parse_name(name + ".weight").canonical] += dw.detach().double()
    return out


def _reference(start, end, block=None):
    names = [n for n in start if block is None or parse_name(n).block == block]
    num = sum(float((end[n] - start[n]).norm() ** 2) for n in names)
    return math.sqrt(num / sum(float(start[n].norm() ** 2) for n in names))


@pytest.mark.parametrize("kind", ["full-mlp", "lora"])
def test_phase_drift_matches_the_weights(tmp_path, kind):
    base = make_tiny_llama(tie=True)
    base.save_pretrained(tmp_path / "start")
    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
        )
    else:
        model = base
        for name, p in model.named_parameters():
            p.requires_grad_(parse_name(name).block == "mlp")
    start = _effective(model)
    _train(model, tmp_path / "run")
    end = _effective(model)
    got = phase_drift(tmp_path / "run", "sft", module_norms(tmp_path / "start"))
    assert got["all"] == pytest.approx(_reference(start, end), rel=1e-5)
    assert got["attn"] == pytest.approx(_reference(start, end, "attn"), rel=1e-5, abs=1e-12)
    assert got["mlp"] == pytest.approx(_reference(start, end, "mlp"), rel=1e-5)
    assert got["all"] > 0 and (got["attn"] == 0) == (kind == "full-mlp")


def test_drift_over_steps_matches_the_weights_at_every_recorded_step(tmp_path):
    base = make_tiny_llama(tie=True)
    base.save_pretrained(tmp_path / "start")
    start, snaps = _effective(base), {}
    _train(base, tmp_path / "run", steps=5, snapshots=snaps)
    got = drift_over_steps(tmp_path / "run", "sft", module_norms(tmp_path / "start")).set_index("step")
    assert list(got.index) == [2, 4, 5]  # every 2 steps, and the last one at close()
    for step in got.index:
        assert got.loc[step, "all"] == pytest.approx(_reference(start, snaps[step]), rel=1e-5)
        assert got.loc[step, "attn"] == pytest.approx(_reference(start, snaps[step], "attn"), rel=1e-5)
        assert got.loc[step, "mlp"] == pytest.approx(_reference(start, snaps[step], "mlp"), rel=1e-5)
    last = phase_drift(tmp_path / "run", "sft", module_norms(tmp_path / "start"))
    assert last["all"] == got["all"].iloc[-1]


def test_module_norms_and_missing_inputs(tmp_path):
    model = make_tiny_llama(tie=True)
    model.save_pretrained(tmp_path / "m")
    norms = module_norms(tmp_path / "m")
    total = math.sqrt(sum(float(p.detach().double().norm() ** 2) for p in model.parameters()))  # tied: once
    assert math.sqrt(float((norms**2).sum())) == pytest.approx(total, rel=1e-9)
    with pytest.raises(FileNotFoundError, match="expected \\*.safetensors"):
        module_norms(tmp_path)
    with pytest.raises(FileNotFoundError):
        phase_drift(tmp_path / "no-run", "sft", norms)
