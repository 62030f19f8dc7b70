"""`layerprobe diff`: every number against numpy on checkpoints written here (safetensors, shards, peft adapters)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_tiny_llama
from safetensors.torch import save_file

from layerprobe import cli
from layerprobe.core.names import parse_name
from layerprobe.record.records import load_records
from layerprobe.weights.checkpoints import open_source
from layerprobe.weights.diff import diff_checkpoints
from layerprobe.weights.diff_quantities import spectrum

FAST = {"chunk_elems": 1024, "threads": 2}  # several chunks per tensor, split over two workers


def toy_weights(seed: int, hidden: int = 32, inter: int = 64, vocab: int = 100, layers: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = {
        "model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g),
        "model.norm.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
        "lm_head.weight": torch.randn(vocab, hidden, generator=g),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        for m, shape in (
            ("self_attn.q_proj", (hidden, hidden)),
            ("self_attn.k_proj", (hidden // 2, hidden)),
            ("self_attn.o_proj", (hidden, hidden)),
            ("mlp.up_proj", (inter, hidden)),
            ("mlp.down_proj", (hidden, inter)),
        ):
            w[p + m + ".weight"] = torch.randn(*shape, generator=g) / hidden**0.5
        w[p + "self_attn.q_proj.bias"] = 0.1 * torch.randn(hidden, generator=g)
        w[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(hidden, generator=g)
    return w


def perturb(w: dict, seed: int, scale: float, base: dict | None = None, pull: float = 0.0) -> dict:
    """w + scale * noise, minus ``pull`` times (w - base): a second stage that partly undoes the first."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * v.abs().mean() * torch.randn(v.shape, generator=g) - (pull * (v - base[k]) if base else 0)
        for k, v in w.items()
    }


def save(w: dict, folder: Path, dtype=torch.float32, shards: int = 1, config: dict | None = None) -> dict:
    """Write a checkpoint folder (one file or ``shards`` shards + index); return the stored values in float64."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = {k: v.to(dtype).contiguous() for k, v in w.items()}
    if shards == 1:
        save_file(stored, folder / "model.safetensors")
    else:
        names = list(stored)
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: stored[k] for k in names[s::shards]}
            save_file(part, folder / fname)
            weight_map.update(dict.fromkeys(part, fname))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return {k: v.double().numpy() for k, v in stored.items()}


def cosine(x, y):
    return float(x.ravel() @ y.ravel() / np.linalg.norm(x) / np.linalg.norm(y))


def ref_two(a, b) -> dict:
    d = b - a
    return {
        "norm_a": np.linalg.norm(a),
        "norm_b": np.linalg.norm(b),
        "delta_norm": np.linalg.norm(d),
        "rel_change": np.linalg.norm(d) / np.linalg.norm(a),
        "cosine": cosine(a, b),
    }


def ref_three(a, b, c) -> dict:
    d1, d2 = (b - a).ravel(), (c - b).ravel()
    q = ref_two(a, b)
    q.update(
        {
            "norm_c": np.linalg.norm(c),
            "delta_norm_bc": np.linalg.norm(d2),
            "rel_change_bc": np.linalg.norm(d2) / np.linalg.norm(b),
            "cosine_bc": cosine(b, c),
            "delta_norm_ac": np.linalg.norm(c - a),
            "rel_change_ac": np.linalg.norm(c - a) / np.linalg.norm(a),
            "cosine_ac": cosine(a, c),
            "cos_cpt_sft": cosine(d1, d2),
            "undo_frac": -(d2 @ d1) / (d1 @ d1),
        }
    )
    return q


def per_tensor(df: pd.DataFrame) -> dict:
    rows = df[df["param"] != ""]
    return {(p, q): v for p, q, v in zip(rows["param"], rows["quantity"], rows["value"])}


def aggregated(df: pd.DataFrame) -> dict:
    rows = df[df["param"] == ""]
    return {
        (la, b, m, q): v
        for la, b, m, q, v in zip(rows["layer"], rows["block"], rows["module"], rows["quantity"], rows["value"])
    }


def groups(names) -> dict:
    """(layer, block, module) keys of the three aggregation levels -> the names they sum over."""
    out: dict = {}
    for n in names:
        p = parse_name(n)
        for key in ((p.layer, p.block, p.module), (p.layer, p.block, ""), (-1, "", "")):
            out.setdefault(key, []).append(n)
    return out


def check(got: float, want: float, quantity: str):
    if quantity.startswith("cos"):  # near 1: compare the distance from 1 too
        assert got == pytest.approx(want, abs=1e-6), quantity
    else:
        assert got == pytest.approx(want, rel=2e-5, abs=1e-9), quantity


def check_all(df, stored: list[dict], ref):
    got_t, got_a = per_tensor(df), aggregated(df)
    names = list(stored[0])
    for n in names:
        for q, want in ref(*(s[n] for s in stored)).items():
            check(got_t[(n, q)], want, q)
    for key, members in groups(names).items():
        flat = [np.concatenate([s[n].ravel() for n in members]) for s in stored]
        for q, want in ref(*flat).items():
            check(got_a[key + (q,)], want, q)
    return got_t


# ---------------------------------------------------------------------------------------------------- full weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shards", [1, 3], ids=["single", "sharded"])
def test_two_way_matches_numpy(tmp_path, dtype, shards):
    w = toy_weights(0)
    a = save(w, tmp_path / "A", dtype, shards)
    b = save(perturb(w, 1, 0.05), tmp_path / "B", dtype, shards)
    df = diff_checkpoints(tmp_path / "A", tmp_path / "B", **FAST)
    assert list(df.columns) == ["run", "phase", "step", "layer", "block", "module", "param", "quantity", "value"]
    assert set(df["phase"]) == {"diff"} and set(df["step"]) == {-1} and set(df["run"]) == {"B_vs_A"}
    check_all(df, [a, b], ref_two)
    cell = df[(df["param"] == "") & (df["layer"] == 1) & (df["module"] == "q_proj")]
    assert set(cell["block"]) == {"attn"}  # weight and bias of q_proj summed into one cell


def test_three_way_undo_frac_matches_numpy(tmp_path):
    w = toy_weights(0)
    cpt = perturb(w, 1, 0.05)
    sft = perturb(cpt, 2, 0.02, base=w, pull=0.4)  # SFT pushes back 40 % of the CPT change, plus noise
    # differently sharded: the reader must pair tensors across shard layouts
    a = save(w, tmp_path / "base", torch.bfloat16, 1)
    b = save(cpt, tmp_path / "cpt", torch.bfloat16, 2)
    c = save(sft, tmp_path / "sft", torch.bfloat16, 3)
    df = diff_checkpoints(tmp_path / "base", tmp_path / "cpt", tmp_path / "sft", **FAST)
    got = check_all(df, [a, b, c], ref_three)
    undo = [got[(n, "undo_frac")] for n in w]
    assert 0.3 < np.median(undo) < 0.5  # the 40 % pull shows through the noise


def test_cosine_stays_accurate_for_tiny_changes(tmp_path):
    w = {"model.layers.0.mlp.up_proj.weight": torch.randn(256, 256, generator=torch.Generator().manual_seed(0))}
    a = save(w, tmp_path / "A")
    b = save(perturb(w, 1, 1e-4), tmp_path / "B")
    got = per_tensor(diff_checkpoints(tmp_path / "A", tmp_path / "B", **FAST))
    name = "model.layers.0.mlp.up_proj.weight"
    want = ref_two(a[name], b[name])
    # 1 - cos is ~1e-8 here: the plain <a,b>/(|a||b|) of float32 sums cannot resolve it
    assert 1 - got[(name, "cosine")] == pytest.approx(1 - want["cosine"], rel=1e-2)
    assert got[(name, "rel_change")] == pytest.approx(want["rel_change"], rel=1e-5)


def test_svd_and_rank90_match_numpy(tmp_path):
    w = toy_weights(0)
    a = save(w, tmp_path / "A")
    b = save(perturb(w, 1, 0.05), tmp_path / "B")
    got = per_tensor(diff_checkpoints(tmp_path / "A", tmp_path / "B", svd=3, **FAST))
    for n in w:
        d = b[n] - a[n]
        if d.ndim != 2:
            assert (n, "rank90") not in got
            continue
        s = np.linalg.svd(d, compute_uv=False)
        np.testing.assert_allclose([got[(n, f"sv_{i}")] for i in (1, 2, 3)], s[:3], rtol=1e-4)
        assert got[(n, "rank90")] == np.searchsorted(np.cumsum(s**2), 0.9 * (s**2).sum()) + 1


@pytest.mark.parametrize("low_rank", [True, False], ids=["low-rank", "full-rank"])
def test_randomized_spectrum(low_rank, monkeypatch):
    g = torch.Generator().manual_seed(0)
    m, n = 600, 400
    if low_rank:  # rank 5 plus noise: the first sketch holds 90 %
        d = torch.randn(m, 5, generator=g) @ torch.randn(5, n, generator=g) + 0.01 * torch.randn(m, n, generator=g)
    else:  # full rank: no narrow sketch reaches 90 %, so it falls back to exact values
        d = torch.randn(m, n, generator=g)
    calls = []
    for fn in ("svd_lowrank", "linalg.svdvals"):
        mod, attr = (torch.linalg, "svdvals") if "." in fn else (torch, fn)
        real = getattr(mod, attr)
        monkeypatch.setattr(mod, attr, lambda *a, _real=real, _fn=fn, **k: (calls.append(_fn), _real(*a, **k))[1])
    s, r90 = spectrum(d, 3, exact_max=50)
    assert calls == (["svd_lowrank"] if low_rank else ["svd_lowrank", "linalg.svdvals"])
    s_ref = np.linalg.svd(d.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(s, s_ref[:3], rtol=1e-3)
    assert r90 == np.searchsorted(np.cumsum(s_ref**2), 0.9 * (s_ref**2).sum()) + 1


def test_each_shard_is_opened_once(tmp_path, monkeypatch):
    from layerprobe.weights import tensorfiles

    w = toy_weights(0)
    save(w, tmp_path / "A", shards=3)
    save(perturb(w, 1, 0.05), tmp_path / "B", shards=3)
    opened = []
    real = tensorfiles.Shard.__init__
    monkeypatch.setattr(
        tensorfiles.Shard, "__init__", lambda self, path: (opened.append(path.name), real(self, path))[1]
    )
    diff_checkpoints(tmp_path / "A", tmp_path / "B", **FAST)
    assert sorted(opened) == sorted(f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3) for _ in "AB")


# ---------------------------------------------------------------------------------------------------- peft adapters


def _llama_stages(tmp_path):
    """base -> CPT adapter (embedding LoRA, rank/alpha patterns) -> merged -> SFT adapter -> SFT merged."""
    from peft import LoraConfig, get_peft_model

    model = make_tiny_llama(hidden=32, layers=2, vocab=64, seed=0)
    model.save_pretrained(tmp_path / "base")
    cpt = LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens", "lm_head"],
        rank_pattern={"layers.1.self_attn.v_proj": 2},
        alpha_pattern={"down_proj": 3},
    )
    peft_model = get_peft_model(model, cpt)
    peft_model.save_pretrained(tmp_path / "cpt_adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "cpt_merged")
    sft = LoraConfig(r=2, lora_alpha=4, use_rslora=True, init_lora_weights=False, target_modules=["q_proj", "k_proj"])
    peft_model = get_peft_model(merged, sft)
    peft_model.save_pretrained(tmp_path / "sft_adapter")
    peft_model.merge_and_unload().save_pretrained(tmp_path / "sft_merged")


def _state(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float64) for k, v in load_file(folder / "model.safetensors").items()}


def test_adapter_matches_merged(tmp_path):
    _llama_stages(tmp_path)
    base, merged = _state(tmp_path / "base"), _state(tmp_path / "cpt_merged")
    # the adapter's dW, chunk by chunk, equals merged - base (embedding and lm_head included)
    src = open_source(tmp_path / "cpt_adapter")
    lora = sorted(src.loras)
    assert "model.embed_tokens.weight" in lora and "lm_head.weight" in lora and len(lora) == 8
    for name in lora:
        op = src.operand(name)
        dw = torch.empty(base[name].size)
        rows, rowlen = base[name].shape
        for r in range(0, rows, 5):
            op.fill(r, min(r + 5, rows), dw[r * rowlen : min(r + 5, rows) * rowlen])
        np.testing.assert_allclose(dw.view(rows, rowlen).numpy(), merged[name] - base[name], atol=2e-6)
    via_adapter = per_tensor(diff_checkpoints(tmp_path / "base", tmp_path / "cpt_adapter", svd=2, **FAST))
    via_merged = per_tensor(diff_checkpoints(tmp_path / "base", tmp_path / "cpt_merged", svd=2, **FAST))
    assert via_adapter.keys() == via_merged.keys()
    for key, want in via_merged.items():
        if key[1] == "rank90":
            assert via_adapter[key] == want, key
        elif want > 1e-6:  # untouched tensors: delta 0 either way
            assert via_adapter[key] == pytest.approx(want, rel=1e-4), key
    for name in lora:  # the LoRA product's spectrum (QR route) against numpy
        s = np.linalg.svd(merged[name] - base[name], compute_uv=False)
        np.testing.assert_allclose([via_adapter[(name, "sv_1")], via_adapter[(name, "sv_2")]], s[:2], rtol=1e-4)
    alone = per_tensor(diff_checkpoints(tmp_path / "cpt_adapter"))
    assert {k[0] for k in alone} == set(lora)
    for name in lora:
        assert alone[(name, "delta_norm")] == pytest.approx(np.linalg.norm(merged[name] - base[name]), rel=1e-4)

    # three-way with SFT as an adapter on the merged CPT model == with SFT merged
    df_ad = diff_checkpoints(tmp_path / "base", tmp_path / "cpt_merged", tmp_path / "sft_adapter", **FAST)
    df_m = diff_checkpoints(tmp_path / "base", tmp_path / "cpt_merged", tmp_path / "sft_merged", **FAST)
    got, want = aggregated(df_ad), aggregated(df_m)
    assert got.keys() == want.keys()
    for key, v in want.items():  # NaN where the SFT adapter leaves a module alone (||C - B|| = 0)
        assert got[key] == pytest.approx(v, rel=1e-4, abs=1e-7, nan_ok=True), key
    sft = _state(tmp_path / "sft_merged")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert per_tensor(df_ad)[(q, "undo_frac")] == pytest.approx(
        ref_three(base[q], merged[q], sft[q])["undo_frac"], rel=1e-4
    )


def test_conv1d_adapter_with_fan_in_fan_out(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=16))
    model.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=4, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, lora_bias=True, init_lora_weights=False
        ),
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    got = per_tensor(diff_checkpoints(tmp_path / "base", tmp_path / "adapter", **FAST))
    want = per_tensor(diff_checkpoints(tmp_path / "base", tmp_path / "merged", **FAST))
    name = "transformer.h.1.attn.c_attn.weight"  # Conv1D: stored (in, out), dW = (B @ A).T * s
    assert want[(name, "delta_norm")] > 0
    assert want[("transformer.h.1.attn.c_attn.bias", "delta_norm")] > 0  # lora_bias: the bias moves too
    for key, v in want.items():  # NaN: rel_change of the zero-initialized biases
        assert got[key] == pytest.approx(v, rel=1e-4, abs=1e-7, nan_ok=True), key


# ---------------------------------------------------------------------------------------------------- alignment


def test_tied_embeddings(tmp_path):
    model = make_tiny_llama(tie=True)
    model.save_pretrained(tmp_path / "tied")  # no lm_head.weight, config says tie_word_embeddings
    emb = model.model.embed_tokens.weight.detach().double().numpy()
    w = {k: v.detach() for k, v in model.state_dict().items()}
    untied = perturb(w, 1, 0.05)
    untied["lm_head.weight"] = untied["model.embed_tokens.weight"] + 0.1
    b = save(untied, tmp_path / "untied")
    df = diff_checkpoints(tmp_path / "tied", tmp_path / "untied", **FAST)
    got = per_tensor(df)
    for q, v in ref_two(emb, b["lm_head.weight"]).items():
        check(got[("lm_head.weight", q)], v, q)
    assert df.attrs["tied"] == [f"{tmp_path / 'tied'}: lm_head.weight tied to model.embed_tokens.weight"]

    # a LoRA on lm_head of a tied base: the head's base value is the embedding
    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load_file

    get_peft_model(
        model, LoraConfig(r=2, lora_alpha=4, target_modules=["lm_head"], init_lora_weights=False)
    ).save_pretrained(tmp_path / "head_adapter")
    f = load_file(tmp_path / "head_adapter" / "adapter_model.safetensors")
    dw = (
        2.0
        * f["base_model.model.lm_head.lora_B.weight"].astype(np.float64)
        @ f["base_model.model.lm_head.lora_A.weight"]
    )
    got = per_tensor(diff_checkpoints(tmp_path / "tied", tmp_path / "head_adapter"))
    for q, v in ref_two(emb, emb + dw).items():
        check(got[("lm_head.weight", q)], v, q)

    # no config: tying is inferred from a checkpoint that holds both with equal data
    bare = {k: v for k, v in w.items() if k != "lm_head.weight"}
    save(bare, tmp_path / "bare")
    both = dict(w, **{"lm_head.weight": w["model.embed_tokens.weight"].clone()})
    save(both, tmp_path / "both")
    assert per_tensor(diff_checkpoints(tmp_path / "bare", tmp_path / "both"))[("lm_head.weight", "delta_norm")] == 0
    with pytest.raises(ValueError, match="lm_head.weight: in .*untied, not in .*bare"):
        diff_checkpoints(tmp_path / "bare", tmp_path / "untied")


def test_missing_extra_and_mismatched_tensors_are_listed(tmp_path):
    w = toy_weights(0, layers=8)
    save(w, tmp_path / "A")
    gone = sorted(k for k in w if ".mlp." in k)[:12]
    changed = {k: v for k, v in perturb(w, 1, 0.05).items() if k not in gone}
    changed["model.norm.weight"] = torch.ones(7)
    changed["model.extra.weight"] = torch.ones(3)
    b = save(changed, tmp_path / "B")
    with pytest.raises(ValueError, match=r"14 missing, extra or mismatched tensors; first 10: ") as e:
        diff_checkpoints(tmp_path / "A", tmp_path / "B")
    msg = str(e.value)
    assert gone[0] in msg and gone[9] in msg and gone[10] not in msg and "--allow-missing" in msg
    df = diff_checkpoints(tmp_path / "A", tmp_path / "B", allow_missing=True)
    assert len(df.attrs["skipped"]) == 14
    assert set(df.loc[df["param"] != "", "param"]) == set(w) - set(gone) - {"model.norm.weight"}
    name = "model.layers.0.self_attn.q_proj.weight"
    assert per_tensor(df)[(name, "delta_norm")] == pytest.approx(
        np.linalg.norm(b[name] - w[name].double().numpy()), rel=1e-5
    )


# ---------------------------------------------------------------------------------------------------- safety


def test_truncated_or_corrupt_file_names_the_file(tmp_path, monkeypatch, capsys):
    w = toy_weights(0)
    save(w, tmp_path / "A")
    save(w, tmp_path / "B")
    f = tmp_path / "B" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{f}.*truncated or corrupt"):
        diff_checkpoints(tmp_path / "A", tmp_path / "B")
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match=rf"{f}.*header is not JSON"):
        diff_checkpoints(tmp_path / "A", tmp_path / "B")
    monkeypatch.setattr(cli, "COMMANDS", ("diff",))
    assert cli.main(["diff", str(tmp_path / "A"), str(tmp_path / "B")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(f) in err and "Traceback" not in err


def test_pickle_refused_unless_allowed(tmp_path):
    w = toy_weights(0)
    a = save(w, tmp_path / "A")
    changed = perturb(w, 1, 0.05)
    (tmp_path / "B").mkdir()
    torch.save(changed, tmp_path / "B" / "pytorch_model.bin")
    torch.save(changed, tmp_path / "B.pt")
    for b in (tmp_path / "B", tmp_path / "B.pt"):
        with pytest.raises(ValueError, match="pickle checkpoint: unpickling can run arbitrary code.*--allow-pickle"):
            diff_checkpoints(tmp_path / "A", b)
        got = per_tensor(diff_checkpoints(tmp_path / "A", b, allow_pickle=True))
        for n in w:
            check(got[(n, "rel_change")], ref_two(a[n], changed[n].double().numpy())["rel_change"], "rel_change")


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_three_way_writes_records_and_figures(tmp_path, monkeypatch, capsys):
    w = toy_weights(0)
    for name, weights in (("base", w), ("cpt", perturb(w, 1, 0.05))):
        save(weights, tmp_path / name, torch.bfloat16)
    save(perturb(perturb(w, 1, 0.05), 2, 0.02, base=w, pull=0.4), tmp_path / "sft", torch.bfloat16)
    monkeypatch.setattr(cli, "COMMANDS", ("diff",))
    out = tmp_path / "diff.parquet"
    rc = cli.main(
        [
            "diff",
            str(tmp_path / "base"),
            str(tmp_path / "cpt"),
            str(tmp_path / "sft"),
            "--out",
            str(out),
            "--figures",
            str(tmp_path / "figs"),
            "--run",
            "studyA",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "by rel_change" in printed and "by undo_frac" in printed and str(out) in printed
    df = load_records(out)
    lib = diff_checkpoints(tmp_path / "base", tmp_path / "cpt", tmp_path / "sft", run="studyA")
    pd.testing.assert_frame_equal(df.reset_index(drop=True), lib.reset_index(drop=True), check_like=True)
    for q in ("rel_change", "rel_change_bc", "undo_frac", "cos_cpt_sft"):
        assert (tmp_path / "figs" / f"diff_{q}.png").stat().st_size > 1000


def _simulated_sd_cos(x: list[np.ndarray], e_norms: list[float], draws: int = 4000) -> float:
    """sd of cos(X, R) over R = each tensor's change replaced by a random direction of the same norm."""
    rng = np.random.default_rng(0)
    xn = math.sqrt(sum(float((xi**2).sum()) for xi in x))
    en = math.sqrt(sum(n**2 for n in e_norms))
    cos = []
    for _ in range(draws):
        dot = sum(
            n * float((xi * u).sum()) / float(np.linalg.norm(u))
            for xi, n, u in ((xi, n, rng.standard_normal(xi.shape)) for xi, n in zip(x, e_norms))
        )
        cos.append(dot / (xn * en))
    return float(np.std(cos))


def test_three_way_null_of_cos_and_undo_frac_matches_a_simulation(tmp_path):
    w = toy_weights(0)
    cpt = perturb(w, 1, 0.05)
    sft = perturb(cpt, 2, 0.02)
    for name in ("model.layers.1.mlp.up_proj.weight", "model.norm.weight"):  # SFT left these alone
        sft[name] = cpt[name].clone()
    a, b, c = (save(x, tmp_path / n) for x, n in ((w, "base"), (cpt, "cpt"), (sft, "sft")))
    df = diff_checkpoints(tmp_path / "base", tmp_path / "cpt", tmp_path / "sft", **FAST)
    agg = df[(df["param"] == "") & (df["module"] == "")].set_index(["layer", "block", "quantity"])["value"]
    for layer, block in ((0, "mlp"), (1, "mlp"), (-1, "")):
        names = [k for k in a if layer == -1 or f"layers.{layer}.mlp" in k]
        x = [b[k] - a[k] for k in names]
        e = [float(np.linalg.norm(c[k] - b[k])) for k in names]
        sd = agg[(layer, block, "null_sd_cos")]
        assert sd == pytest.approx(_simulated_sd_cos(x, e), rel=0.06)
        xn, en = math.sqrt(sum(float((xi**2).sum()) for xi in x)), math.sqrt(sum(v**2 for v in e))
        assert agg[(layer, block, "null_sd_undo_frac")] == pytest.approx(sd * en / xn)
    per = df[df["param"] == "model.layers.0.mlp.up_proj.weight"].set_index("quantity")["value"]
    assert per["null_sd_cos"] == pytest.approx(1 / math.sqrt(a["model.layers.0.mlp.up_proj.weight"].size))
    assert math.isnan(df[(df["param"] == "model.norm.weight") & (df["quantity"] == "null_sd_cos")]["value"].iloc[0])
    # two unrelated noise updates: the measured cos lies inside the null's band
    assert abs(agg[(-1, "", "cos_cpt_sft")]) < 4 * agg[(-1, "", "null_sd_cos")]
