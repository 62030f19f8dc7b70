"""Causal attribution: a change planted in one layer is attributed to that layer; every value is checked against a
model built by plain state-dict surgery."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_tiny_llama
from layerprobe.attribute import (AttributeConfig, WeightSwapper, attribute_change, effects, expand_groups,
                                  plot_attribution)
from layerprobe.checkpoints import open_source
from layerprobe.records import COLUMNS

LAYERS = 4
PLANTED = 2
INPUT = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8, 9, 7]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT).logits[0].double()


def make_eval(reference: torch.Tensor):
    """Distance of the logits to the tuned model's logits, and one logit: both move only with the planted change."""
    calls = []

    def evaluate(model, tokenizer):
        calls.append(1)
        out = logits(model)
        return {"dist": float(torch.linalg.vector_norm(out - reference)), "logit": float(out[-1, 7])}

    evaluate.calls = calls
    return evaluate


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """base/ and tuned/ (full checkpoints): tuned = base + a change in layer 2's mlp.down_proj and self_attn.o_proj."""
    root = tmp_path_factory.mktemp("planted")
    base = make_tiny_llama(layers=LAYERS, seed=1)
    base.save_pretrained(root / "base")
    tuned = make_tiny_llama(layers=LAYERS, seed=1)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in ("mlp.down_proj", "self_attn.o_proj"):
            w = tuned.get_submodule(f"model.layers.{PLANTED}.{name}").weight
            w.add_(0.5 * torch.randn(w.shape, generator=g))
    tuned.save_pretrained(root / "tuned")
    return root, base, tuned


def hybrid(base, tuned, on_base) -> torch.nn.Module:
    """Reference: a fresh model with base weights where ``on_base(name)`` and tuned weights elsewhere."""
    model = make_tiny_llama(layers=LAYERS, seed=1)
    b, t = base.state_dict(), tuned.state_dict()
    model.load_state_dict({k: (b[k] if on_base(k) else t[k]) for k in t})
    return model


def test_planted_layer_is_found_and_matches_state_dict_surgery(planted, tmp_path):
    root, base, tuned = planted
    ref = logits(tuned)
    evaluate = make_eval(ref)
    cache = tmp_path / "cache.json"
    res = attribute_change(root / "base", root / "tuned", evaluate, groups=("layers", "blocks", "mlp & layers:1-2"),
                    cache=str(cache))
    rec = res.records
    assert list(rec.columns) == list(COLUMNS) and set(rec["phase"]) == {"attribute"}
    v = rec.set_index(["param", "quantity"])["value"]
    d_base = float(torch.linalg.vector_norm(logits(base) - ref))
    assert d_base > 0.1
    assert v[("", "tuned:dist")] == 0.0 and v[("", "base:dist")] == d_base
    for i in range(LAYERS):
        if i == PLANTED:  # reverting the planted layer restores the base model exactly; applying it alone, the tuned
            assert v[(f"layers:{i}", "revert:dist")] == d_base
            assert v[(f"layers:{i}", "apply:dist")] == 0.0
            assert v[(f"layers:{i}", "revert:logit")] == v[("", "base:logit")]
        else:  # nothing to revert, nothing to apply
            assert v[(f"layers:{i}", "revert:dist")] == 0.0
            assert v[(f"layers:{i}", "apply:dist")] == d_base
    # partial groups against plain state-dict surgery, to the last bit
    for group, on_base in (("mlp", lambda k: ".mlp." in k), ("attn", lambda k: ".self_attn." in k),
                           ("mlp & layers:1-2", lambda k: ".mlp." in k and (".1." in k or ".2." in k))):
        reverted = logits(hybrid(base, tuned, on_base))
        applied = logits(hybrid(base, tuned, lambda k, f=on_base: not f(k)))
        assert v[(group, "revert:dist")] == float(torch.linalg.vector_norm(reverted - ref))
        assert v[(group, "apply:dist")] == float(torch.linalg.vector_norm(applied - ref))
        assert v[(group, "revert:dist")] > 0 and v[(group, "apply:dist")] > 0  # partial: neither end
    # rel_change of the planted layer against numpy
    b, t = base.state_dict(), tuned.state_dict()
    keys = [k for k in t if f"layers.{PLANTED}." in k]
    num = sum(float(((t[k].double() - b[k].double()) ** 2).sum()) for k in keys)
    den = sum(float((b[k].double() ** 2).sum()) for k in keys)
    assert v[(f"layers:{PLANTED}", "rel_change")] == pytest.approx(np.sqrt(num / den), rel=1e-12)
    assert v[("mlp", "rel_change")] > 0 and v[("embed", "rel_change")] == 0
    # cost: the two baselines, and revert/apply of the groups holding part of the change (attn, mlp); the
    # groups holding none of it (other layers; embed, norm, head) or all of it (layers:2) are known exactly, and
    # "mlp & layers:1-2" changed the same tensor as "mlp": evaluated once
    assert res.n_evaluated == len(evaluate.calls) == 2 + 2 * 2 and res.n_reused == 2
    assert res.n_known == 2 * (LAYERS - 1 + 3) + 2
    pos = rec[rec["quantity"] == "rel_change"].set_index("param")[["layer", "block"]]
    assert tuple(pos.loc["layers:2"]) == (2, "") and tuple(pos.loc["mlp"]) == (-1, "mlp")
    assert tuple(pos.loc["mlp & layers:1-2"]) == (-1, "mlp")

    e = effects(rec)
    top = e[(e["mode"] == "revert") & (e["metric"] == "dist") & (e["layer"] >= 0) & (e["block"] == "")]
    assert top.loc[top["effect"].abs().idxmax(), "layer"] == PLANTED
    assert top.set_index("layer").loc[PLANTED, "share"] == pytest.approx(1.0)

    # a rerun is free, and gives the same table
    again = attribute_change(root / "base", root / "tuned", evaluate, groups=("layers", "blocks", "mlp & layers:1-2"),
                      cache=str(cache))
    assert again.n_evaluated == 0 and again.n_cached == res.n_evaluated
    assert len(evaluate.calls) == res.n_evaluated
    pd.testing.assert_frame_equal(again.records, rec)
    entries = json.loads(cache.read_text())
    assert {e["mode"] for e in entries.values()} == {"tuned", "base", "revert", "apply"}
    # another evaluation key misses the cache
    other = attribute_change(root / "base", root / "tuned", evaluate, groups=("layers:2",), modes=("revert",),
                      cache=str(cache), eval_key="other probes")
    assert other.n_evaluated == 2 and other.n_cached == 0

    paths = plot_attribution(rec, tmp_path / "figures")
    assert [p.name for p in paths] == ["attribute_dist.png", "attribute_logit.png"]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_swapper_round_trip_is_exact_and_cells_point_at_the_planted_block(planted, tmp_path):
    root, base, tuned = planted
    model = make_tiny_llama(layers=LAYERS, seed=99)
    model.load_state_dict(tuned.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swap = WeightSwapper(model, open_source(root / "base"), open_source(root / "tuned"), state="tuned")
    changes = swap.measure()
    assert sorted(n for n, (d2, _) in changes.items() if d2 > 0) == [
        f"model.layers.{PLANTED}.mlp.down_proj.weight", f"model.layers.{PLANTED}.self_attn.o_proj.weight"]
    swap.set(swap.names(), "base")
    for k, v in model.state_dict().items():
        assert torch.equal(v, base.state_dict()[k]), k
    swap.set(swap.names(), "tuned")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    res = attribute_change(root / "base", root / "tuned", make_eval(logits(tuned)), groups=("cells",),
                           modes=("revert",))
    e = effects(res.records)
    hit = e[(e["metric"] == "dist") & (e["effect"] != 0)]
    assert sorted(zip(hit["layer"], hit["block"])) == [(PLANTED, "attn"), (PLANTED, "mlp")]
    assert res.n_evaluated == 2 + 2 and set(e["mode"]) == {"revert"}
    paths = plot_attribution(res.records, tmp_path, metrics=["dist"])
    assert [p.name for p in paths] == ["attribute_cells_dist.png"]  # cells alone: no bars (no empty figure)


def test_two_layers_changed_the_bigger_one_wins_and_matches_surgery(planted, tmp_path):
    """tuned2 = tuned + a small change in layer 0: reverting layer 2 now goes through the swap path."""
    root, base, tuned = planted
    tuned2 = make_tiny_llama(layers=LAYERS, seed=1)
    tuned2.load_state_dict(tuned.state_dict())
    with torch.no_grad():
        w = tuned2.model.layers[0].mlp.up_proj.weight
        w.add_(0.02 * torch.randn(w.shape, generator=torch.Generator().manual_seed(3)))
    tuned2.save_pretrained(tmp_path / "tuned2")
    ref = logits(tuned2)
    res = attribute_change(root / "base", tmp_path / "tuned2", make_eval(ref), groups=("layers",))
    v = res.records.set_index(["param", "quantity"])["value"]
    for i in (0, PLANTED):
        reverted = logits(hybrid(base, tuned2, lambda k, i=i: f"layers.{i}." in k))
        applied = logits(hybrid(base, tuned2, lambda k, i=i: f"layers.{i}." not in k))
        assert v[(f"layers:{i}", "revert:dist")] == float(torch.linalg.vector_norm(reverted - ref))
        assert v[(f"layers:{i}", "apply:dist")] == float(torch.linalg.vector_norm(applied - ref))
    e = effects(res.records)
    rev = e[(e["mode"] == "revert") & (e["metric"] == "dist")].set_index("layer")
    assert rev["effect"].idxmax() == PLANTED and rev.loc[1, "effect"] == rev.loc[3, "effect"] == 0
    assert 0.9 < rev.loc[PLANTED, "share"] < 1.1 and 0 < rev.loc[0, "share"] < 0.2
    assert res.n_evaluated == 2 + 2 * 2


def test_lora_adapter_on_two_layers(tmp_path):
    """tuned = base + an SFT LoRA on the q/v of layers 1 (large) and 2 (small): attribution points at layer 1."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_llama(layers=LAYERS, seed=3)
    base.save_pretrained(tmp_path / "base")
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=[1, 2],
                     init_lora_weights=False)
    peft_model = get_peft_model(make_tiny_llama(layers=LAYERS, seed=3), cfg)
    with torch.no_grad():  # a large change in layer 1, a small one in layer 2
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(20 if ".layers.1." in n else 2)
    peft_model.save_pretrained(tmp_path / "sft")
    merged = peft_model.merge_and_unload()
    ref = logits(merged)
    d_base = float(torch.linalg.vector_norm(logits(base) - ref))

    res = attribute_change(tmp_path / "base", tmp_path / "sft", make_eval(ref), groups=("layers", "blocks"))
    v = res.records.set_index(["param", "quantity"])["value"]
    tol = 1e-4 * d_base  # our merge (W + s*B@A in float32) against peft's: rounding only
    assert v[("", "tuned:dist")] == pytest.approx(0.0, abs=tol)
    assert v[("", "base:dist")] == d_base  # exact: the base tensors are copied back from the file
    assert v[("attn", "revert:dist")] == d_base and v[("attn", "apply:dist")] == v[("", "tuned:dist")]
    for i in (1, 2):  # against state-dict surgery on peft's merged model
        reverted = logits(hybrid(base, merged, lambda k, i=i: f"layers.{i}." in k))
        applied = logits(hybrid(base, merged, lambda k, i=i: f"layers.{i}." not in k))
        assert v[(f"layers:{i}", "revert:dist")] == pytest.approx(float(torch.linalg.vector_norm(reverted - ref)),
                                                                  abs=tol)
        assert v[(f"layers:{i}", "apply:dist")] == pytest.approx(float(torch.linalg.vector_norm(applied - ref)),
                                                                 abs=tol)
    for i in (0, 3):
        assert v[(f"layers:{i}", "revert:dist")] == v[("", "tuned:dist")]
        assert v[(f"layers:{i}", "apply:dist")] == d_base
    assert v[("layers:1", "revert:dist")] > 3 * v[("layers:2", "revert:dist")]
    assert v[("mlp", "rel_change")] == 0 and v[("layers:1", "rel_change")] > v[("layers:2", "rel_change")] > 0
    assert res.n_evaluated == 2 + 2 * 2 and res.n_known == 2 * 7  # layers 0, 3, embed, attn, mlp, norm, head
    # weight share: of the entries SFT changed (q and v of layers 1 and 2, equal sizes), half per layer
    assert v[("layers:1", "weight_share")] == pytest.approx(0.5) and v[("attn", "weight_share")] == 1.0
    assert v[("mlp", "weight_share")] == 0
    e = effects(res.records).set_index(["group", "mode", "metric"])
    row = e.loc[("layers:1", "revert", "dist")]
    assert row["share_per_weight"] == pytest.approx(row["share"] / 0.5)


def test_group_expansion_and_bad_input(planted):
    shapes = [("model.embed_tokens.weight", (8, 4)), ("model.layers.0.mlp.up_proj.weight", (4, 4)),
              ("model.layers.1.self_attn.q_proj.weight", (4, 4)), ("lm_head.weight", (8, 4))]
    assert expand_groups(shapes, ["layers", "blocks", "cells", "mlp"]) == [
        "layers:0", "layers:1", "embed", "attn", "mlp", "head", "mlp & layers:0", "attn & layers:1"]
    with pytest.raises(ValueError, match="modes must be some of revert, apply"):
        AttributeConfig(modes=("undo",))
    root, _, _ = planted
    with pytest.raises(ValueError, match="no layer 9"):
        attribute_change(root / "base", root / "tuned", make_eval(torch.zeros(1)), groups=("layers:9",))
    with pytest.raises(ValueError, match="base must hold full weights"):
        WeightSwapper(make_tiny_llama(layers=LAYERS), _Adapter(), open_source(root / "tuned"), state="base")


class _Adapter:
    kind = "adapter"
    label = "some/adapter"


def test_cli_needs_both_checkpoints(capsys):
    from layerprobe import cli

    assert cli.main(["attribute", "--base", "somewhere"]) == 2
    assert "expected --run RUN_DIR, or --base CPT_MODEL and --tuned SFT_MODEL" in capsys.readouterr().err
