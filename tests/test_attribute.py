"""Causal attribution: a change planted in one layer is attributed to that layer; every value is checked against a
model built by plain state-dict surgery."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_llama

from layerprobe.attribution.attribute import AttributeConfig, attribute_change, expand_groups
from layerprobe.attribution.swap import WeightSwapper
from layerprobe.plot.effects import attribution_figures as plot_attribution
from layerprobe.record.attribution_records import effects
from layerprobe.record.records import COLUMNS
from layerprobe.weights.checkpoints import open_source

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
    res = attribute_change(
        root / "base", root / "tuned", evaluate, groups=("layers", "blocks", "mlp & layers:1-2"), cache=str(cache)
    )
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
    for group, on_base in (
        ("mlp", lambda k: ".mlp." in k),
        ("attn", lambda k: ".self_attn." in k),
        ("mlp & layers:1-2", lambda k: ".mlp." in k and (".1." in k or ".2." in k)),
    ):
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
    again = attribute_change(
        root / "base", root / "tuned", evaluate, groups=("layers", "blocks", "mlp & layers:1-2"), cache=str(cache)
    )
    assert again.n_evaluated == 0 and again.n_cached == res.n_evaluated
    assert len(evaluate.calls) == res.n_evaluated
    pd.testing.assert_frame_equal(again.records, rec)
    entries = json.loads(cache.read_text())
    assert {e["mode"] for e in entries.values()} == {"tuned", "base", "revert", "apply"}
    # another evaluation key misses the cache
    other = attribute_change(
        root / "base",
        root / "tuned",
        evaluate,
        groups=("layers:2",),
        modes=("revert",),
        cache=str(cache),
        eval_key="other probes",
    )
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
        f"model.layers.{PLANTED}.mlp.down_proj.weight",
        f"model.layers.{PLANTED}.self_attn.o_proj.weight",
    ]
    swap.set(swap.names(), "base")
    for k, v in model.state_dict().items():
        assert torch.equal(v, base.state_dict()[k]), k
    swap.set(swap.names(), "tuned")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k

    res = attribute_change(
        root / "base", root / "tuned", make_eval(logits(tuned)), groups=("cells",), modes=("revert",)
    )
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
    cfg = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], layers_to_transform=[1, 2], init_lora_weights=False
    )
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
        assert v[(f"layers:{i}", "revert:dist")] == pytest.approx(
            float(torch.linalg.vector_norm(reverted - ref)), abs=tol
        )
        assert v[(f"layers:{i}", "apply:dist")] == pytest.approx(
            float(torch.linalg.vector_norm(applied - ref)), abs=tol
        )
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
    shapes = [
        ("model.embed_tokens.weight", (8, 4)),
        ("model.layers.0.mlp.up_proj.weight", (4, 4)),
        ("model.layers.1.self_attn.q_proj.weight", (4, 4)),
        ("lm_head.weight", (8, 4)),
    ]
    assert expand_groups(shapes, ["layers", "blocks", "cells", "mlp"]) == [
        "layers:0",
        "layers:1",
        "embed",
        "attn",
        "mlp",
        "head",
        "mlp & layers:0",
        "attn & layers:1",
    ]
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


# ------------------------------------------------------------------------------------------ denominators


def test_trained_and_delta_shares_of_a_lora_adapter_against_plain_counts(tmp_path):
    """trained_share counts r * (in + out) per adapted matrix (ranks and alphas differ per module); delta_share is
    the share of ||s * B @ A||^2, here summed entry by entry from the adapter's factors."""
    from peft import LoraConfig, get_peft_model

    base = make_tiny_llama(layers=LAYERS, seed=5)
    base.save_pretrained(tmp_path / "base")
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "up_proj", "down_proj"],
        layers_to_transform=[0, 1, 3],
        rank_pattern={"down_proj": 2},
        alpha_pattern={"k_proj": 2},
        init_lora_weights=False,
    )
    peft_model = get_peft_model(make_tiny_llama(layers=LAYERS, seed=5), cfg)
    peft_model.save_pretrained(tmp_path / "sft")
    sd = {k: t.detach().double().numpy() for k, t in peft_model.state_dict().items()}  # before merging
    merged = peft_model.merge_and_unload()
    res = attribute_change(
        tmp_path / "base", tmp_path / "sft", make_eval(logits(merged)), groups=("layers", "blocks", "attn & layers:3")
    )
    v = res.records.set_index(["param", "quantity"])["value"]

    # by hand: in and out of each module of the tiny Llama (hidden 32, 2 KV heads of 8, intermediate 64)
    dims = {"q_proj": (32, 32), "k_proj": (32, 16), "up_proj": (32, 64), "down_proj": (64, 32)}
    rank = {"q_proj": 4, "k_proj": 4, "up_proj": 4, "down_proj": 2}
    alpha = {"q_proj": 8, "k_proj": 2, "up_proj": 8, "down_proj": 8}
    trained, delta2, dense = {}, {}, {}
    for layer in (0, 1, 3):
        for module, (n_in, n_out) in dims.items():
            key = (layer, module)
            trained[key] = rank[module] * (n_in + n_out)
            dense[key] = n_in * n_out
            block = "self_attn" if module in ("q_proj", "k_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            a, b = sd[f"{prefix}.lora_A.default.weight"], sd[f"{prefix}.lora_B.default.weight"]
            assert a.shape == (rank[module], n_in) and b.shape == (n_out, rank[module])
            s = alpha[module] / rank[module]
            total = 0.0
            for i in range(n_out):  # a plain loop over the entries of s * B @ A
                for j in range(n_in):
                    total += (s * sum(b[i, k] * a[k, j] for k in range(rank[module]))) ** 2
            delta2[key] = total

    def share(values, keep):
        return sum(x for k, x in values.items() if keep(*k)) / sum(values.values())

    is_attn = lambda layer, m: m in ("q_proj", "k_proj")
    for group, keep in (
        ("attn", is_attn),
        ("mlp", lambda layer, m: not is_attn(layer, m)),
        ("layers:1", lambda layer, m: layer == 1),
        ("layers:3", lambda layer, m: layer == 3),
        ("attn & layers:3", lambda layer, m: layer == 3 and is_attn(layer, m)),
    ):
        assert v[(group, "trained_share")] == pytest.approx(share(trained, keep), rel=1e-12), group
        assert v[(group, "weight_share")] == pytest.approx(share(dense, keep), rel=1e-12), group
        assert v[(group, "delta_share")] == pytest.approx(share(delta2, keep), rel=1e-9), group
    assert v[("attn", "trained_share")] != pytest.approx(v[("attn", "weight_share")])  # LoRA: not the dense share
    for group in ("layers:2", "embed", "head"):
        assert v[(group, "trained_share")] == v[(group, "delta_share")] == v[(group, "weight_share")] == 0
    # rel_change is ||s * B @ A|| / ||W_b|| itself
    w2 = sum(float((t.double() ** 2).sum()) for k, t in base.state_dict().items() if ".layers.1." in k)
    d2 = sum(x for (layer, _), x in delta2.items() if layer == 1)
    assert v[("layers:1", "rel_change")] == pytest.approx(np.sqrt(d2 / w2), rel=1e-9)

    e = effects(res.records).set_index(["group", "mode", "metric"])
    for group in ("attn", "mlp", "layers:1"):
        row = e.loc[(group, "revert", "dist")]
        assert row["share_per_trained"] == pytest.approx(row["share"] / row["trained_share"])
        assert row["share_per_delta"] == pytest.approx(row["share"] / row["delta_share"])
        assert row["share_per_weight"] == pytest.approx(row["share"] / row["weight_share"])


def test_full_weights_trained_share_is_the_weight_share_and_delta_share_the_squared_change(planted):
    root, base, tuned = planted
    res = attribute_change(
        root / "base", root / "tuned", make_eval(logits(tuned)), groups=("blocks", "cells"), modes=("revert",)
    )
    v = res.records.set_index(["param", "quantity"])["value"]
    b, t = base.state_dict(), tuned.state_dict()
    d2 = {k: float(((t[k].double() - b[k].double()) ** 2).sum()) for k in t}
    total = sum(d2.values())
    groups = [g for g in dict.fromkeys(res.records["param"]) if g]
    for g in groups:
        assert v[(g, "trained_share")] == v[(g, "weight_share")], g
    mlp = sum(x for k, x in d2.items() if ".mlp." in k)
    assert v[("mlp", "delta_share")] == pytest.approx(mlp / total, rel=1e-12)
    assert v[(f"attn & layers:{PLANTED}", "delta_share")] == pytest.approx(1 - mlp / total, rel=1e-12)
    # the changed down_proj (64 x 32) holds twice the entries of the changed o_proj (32 x 32)
    assert v[("mlp", "weight_share")] == pytest.approx(2 / 3) and v[("embed", "delta_share")] == 0


# ------------------------------------------------------------------------------------------ over seeds


def seed_records(seed: int, attn: float, mlp: float, tuned: float = 0.4, base: float = 0.9) -> pd.DataFrame:
    """Hand-made attribution records of one seed: revert:cloze of attn and mlp, the three denominators."""
    rows = [(-1, "", "", "base:cloze", base), (-1, "", "", "tuned:cloze", tuned)]
    sizes = {"attn": (0.25, 0.4, 0.3 + 0.01 * seed), "mlp": (0.75, 0.6, 0.7 - 0.01 * seed)}
    for group, value in (("attn", attn), ("mlp", mlp)):
        rows += [(-1, group, group, "revert:cloze", value), (-1, group, group, "rel_change", 0.01)]
        rows += [
            (-1, group, group, q, x) for q, x in zip(("weight_share", "trained_share", "delta_share"), sizes[group])
        ]
    df = pd.DataFrame(rows, columns=["layer", "block", "param", "quantity", "value"])
    return df.assign(run=f"seed{seed}", phase="attribute", step=-1, module="")[list(COLUMNS)]


def t_interval(x) -> tuple[float, float]:
    from scipy import stats

    x = np.asarray(x, dtype=float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean() - half, x.mean() + half


def test_over_seeds_gives_t_intervals_and_the_paired_attn_minus_mlp_difference():
    from layerprobe.record.attribution_records import over_seeds, paired_difference

    reverted = {1: (0.80, 0.60), 2: (0.70, 0.52), 3: (0.86, 0.66), 4: (0.75, 0.58)}  # (attn, mlp) per seed
    per_seed = pd.concat(
        [effects(seed_records(s, a, m)).assign(seed=s) for s, (a, m) in reverted.items()], ignore_index=True
    )
    diff = paired_difference(per_seed, "attn", "mlp")
    table = over_seeds(pd.concat([per_seed, diff], ignore_index=True)).set_index("group")
    assert list(table.index) == ["attn", "mlp", "attn - mlp"] and set(table["n_seeds"]) == {4}

    # by hand: share = (value - tuned) / (base - tuned); ratios per seed, then their mean and interval
    full = 0.9 - 0.4
    share = {g: np.array([(reverted[s][i] - 0.4) / full for s in reverted]) for i, g in enumerate(("attn", "mlp"))}
    sizes = {
        "attn": (0.25, 0.4, np.array([0.3 + 0.01 * s for s in reverted])),
        "mlp": (0.75, 0.6, np.array([0.7 - 0.01 * s for s in reverted])),
    }
    for g in ("attn", "mlp"):
        row = table.loc[g]
        effect = share[g] * full
        assert row["effect"] == pytest.approx(effect.mean())
        assert (row["lo"], row["hi"]) == pytest.approx(t_interval(effect))
        assert (row["share_lo"], row["share_hi"]) == pytest.approx(t_interval(share[g]))
        for ratio, size in zip(("share_per_weight", "share_per_trained", "share_per_delta"), sizes[g]):
            assert row[ratio] == pytest.approx((share[g] / size).mean())
            assert (row[f"{ratio}_lo"], row[f"{ratio}_hi"]) == pytest.approx(t_interval(share[g] / size))
        assert row["delta_share"] == pytest.approx(sizes[g][2].mean()) and row["sft_effect"] == pytest.approx(-full)

    # attn - mlp: paired by seed, not the difference of two independent intervals
    d = share["attn"] - share["mlp"]
    row = table.loc["attn - mlp"]
    assert row["share"] == pytest.approx(d.mean())
    assert (row["share_lo"], row["share_hi"]) == pytest.approx(t_interval(d))
    lo_a, hi_a = t_interval(share["attn"])
    assert row["share_hi"] - row["share_lo"] < hi_a - lo_a  # the pairing removes the common seed noise here
    dr = share["attn"] / 0.4 - share["mlp"] / 0.6
    assert (row["share_per_trained_lo"], row["share_per_trained_hi"]) == pytest.approx(t_interval(dr))
    assert row["sft_effect"] == pytest.approx(-full)
    per = diff.set_index("seed")
    assert per.loc[3, "share"] == pytest.approx(d[2]) and set(per["group"]) == {"attn - mlp"}

    # one seed: the mean, and no interval
    one = over_seeds(per_seed[per_seed["seed"] == 1]).set_index("group")
    assert one.loc["attn", "share"] == pytest.approx(share["attn"][0])
    assert one[["lo", "hi", "share_lo", "share_hi", "share_per_trained_lo"]].isna().all().all()
    with pytest.raises(ValueError, match="twice for the same seed"):
        over_seeds(pd.concat([per_seed, per_seed]))
    with pytest.raises(ValueError, match="not paired"):
        paired_difference(per_seed[~((per_seed["seed"] == 2) & (per_seed["group"] == "mlp"))])


# ------------------------------------------------------------------------------------------ study A's script


def _load_study_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "study_a" / "attribute.py"
    spec = importlib.util.spec_from_file_location("study_a_attribute", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_script_attributes_the_most_forgetting_and_the_reference_cell_on_a_toy_sweep(tmp_path, capsys):
    """A toy grid: the reference cell (CPT a128 SFT a8 A), the most-forgetting cell (a32 a32 A) and a third one, two
    seeds each; tiny Llamas with real LoRA adapters stand in for the runs, a logit distance for the evaluation."""
    from peft import LoraConfig, get_peft_model

    from layerprobe.core.stats import t_mean_ci

    script = _load_study_script()
    grid = tmp_path / "grid"
    rows = []
    cells = {(128, 8, "A"): 0.2, (32, 32, "A"): 0.5, (32, 8, "B"): 0.1}  # mean retention_drop of each cell
    for (cpt, sft, modules), drop in cells.items():
        for seed in (1, 2):
            cell = f"cpt.lora_alpha={cpt},sft.lora_alpha={sft},sft.target_modules={modules},seed={seed}"
            rows.append(
                {
                    "cell": cell,
                    "cpt.lora_alpha": cpt,
                    "sft.lora_alpha": sft,
                    "sft.target_modules": modules,
                    "seed": seed,
                    "retention_drop": drop + 0.01 * seed,
                }
            )
            if modules == "B":
                continue  # never attributed: no run folder needed
            run = grid / cell
            make_tiny_llama(layers=LAYERS, seed=seed).save_pretrained(run / "merged")
            torch.manual_seed(100 * seed + sft)
            peft_model = get_peft_model(
                make_tiny_llama(layers=LAYERS, seed=seed),
                LoraConfig(
                    r=4,
                    lora_alpha=sft,
                    target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                    init_lora_weights=False,
                ),
            )
            peft_model.save_pretrained(run / "sft")
    grid.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(grid / "results.csv", index=False)

    calls = []

    def attribute(run, out, groups, selectors):
        calls.append(run.name)
        reference = logits(get_peft_model_merged(run))
        return attribute_change(run / "merged", run / "sft", make_eval(reference), groups=(*groups, *selectors)).records

    out = tmp_path / "figures"
    bands = ["layers:0-1", "layers:2-3"]
    table = script.main(
        ["--grid", str(grid), "--out", str(out), "--bands", *bands, "--metrics", "dist", "logit"], attribute=attribute
    )
    assert len(calls) == 4 and not any("target_modules=B" in c for c in calls)
    assert list(dict.fromkeys(table["cell"])) == ["CPT a32 SFT a32 A", "CPT a128 SFT a8 A"]
    groups = {"attn", "mlp", *bands, "attn - mlp", "sum of parts: attn + mlp", "sum of parts: 2 layer bands"}
    assert set(table["group"]) == groups and set(table["n_seeds"]) == {2}
    seeds = pd.read_csv(out / "attribution_seeds.csv")
    saved = pd.read_csv(out / "attribution.csv")
    assert len(saved) == len(table) and set(seeds["seed"]) == {1, 2}
    # every interval re-derived from the per-seed file alone
    for _, row in saved[saved["metric"] == "dist"].iterrows():
        d = seeds[
            (seeds["cell"] == row["cell"])
            & (seeds["group"] == row["group"])
            & (seeds["mode"] == row["mode"])
            & (seeds["metric"] == "dist")
        ]
        assert len(d) == 2
        for col, lo, hi in (
            ("effect", "lo", "hi"),
            ("share", "share_lo", "share_hi"),
            ("share_per_trained", "share_per_trained_lo", "share_per_trained_hi"),
        ):
            if row["group"].startswith("sum of parts") and col == "share_per_trained":
                assert np.isnan(row[col])  # ratios of a sum: not given
                continue
            assert row[col] == pytest.approx(d[col].mean(), rel=1e-5, abs=1e-9)
            assert (row[lo], row[hi]) == pytest.approx(t_mean_ci(d[col]), rel=1e-5, abs=1e-6)
    # the denominators of this LoRA (same r on every module): attn holds q (32x32) and v (32x16) per layer,
    # r * (64 + 48) of r * (64 + 48 + 96 + 96) trained parameters
    attn = table[(table["group"] == "attn") & (table["mode"] == "revert") & (table["metric"] == "dist")]
    assert attn["trained_share"].to_numpy() == pytest.approx([112 / 304] * 2)
    assert attn["weight_share"].to_numpy() == pytest.approx([(1024 + 512) / (1024 + 512 + 2048 + 2048)] * 2)
    diff = table[(table["group"] == "attn - mlp") & (table["metric"] == "dist") & (table["mode"] == "revert")]
    mlp = table[(table["group"] == "mlp") & (table["mode"] == "revert") & (table["metric"] == "dist")]
    assert diff["share"].to_numpy() == pytest.approx(attn["share"].to_numpy() - mlp["share"].to_numpy())
    assert "not in this grid" not in capsys.readouterr().out


def get_peft_model_merged(run):
    """The run's SFT model merged by peft: the reference the logit distance is measured to."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32)
    return PeftModel.from_pretrained(base, run / "sft").merge_and_unload()


def test_the_cache_key_reads_bytes_not_file_times(planted, tmp_path):
    """Attribution caches through the evaluation service's key: a copy of the checkpoints with new file times hits,
    one changed weight misses."""
    import shutil

    root, base, tuned = planted
    for name in ("base", "tuned"):
        shutil.copytree(root / name, tmp_path / name)
    cache, evaluate = str(tmp_path / "cache.json"), make_eval(logits(tuned))
    first = attribute_change(
        tmp_path / "base", tmp_path / "tuned", evaluate, groups=("layers:2",), modes=("revert",), cache=cache
    )
    for f in (tmp_path / "tuned").iterdir():
        os.utime(f, (1, 1))
    again = attribute_change(
        tmp_path / "base", tmp_path / "tuned", evaluate, groups=("layers:2",), modes=("revert",), cache=cache
    )
    assert first.n_evaluated == 2 and again.n_evaluated == 0 and again.n_cached == 2
    changed = make_tiny_llama(layers=LAYERS, seed=1)
    with torch.no_grad():
        changed.model.layers[PLANTED].mlp.down_proj.weight.add_(0.25)
    changed.save_pretrained(tmp_path / "tuned")
    other = attribute_change(
        tmp_path / "base", tmp_path / "tuned", evaluate, groups=("layers:2",), modes=("revert",), cache=cache
    )
    assert other.n_cached == 0 and other.n_evaluated == 2
