"""Small exact checks of layerprobe.weights.diff (mutation testing, issue 24): checkpoints of a few 2x2 tensors
written here, whose norms, changes and spectra can be checked on paper; the options' checks and messages; the run's
name; the aggregation levels; tensors an adapter leaves alone; the order of the rows; tied heads."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from layerprobe.weights import diff as diff_mod
from layerprobe.weights.diff import DiffConfig, diff_checkpoints

UP0, DOWN0, Q1 = (
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.1.self_attn.q_proj.weight",
)
A = {  # norms 5, 1 and 2
    UP0: [[3.0, 0.0], [0.0, 4.0]],
    DOWN0: [[1.0, 0.0], [0.0, 0.0]],
    Q1: [[0.0, 2.0], [0.0, 0.0]],
}
DELTA = {  # B - A: norms 2, 0 and 1; up_proj's change is rank 1 (singular values 2, 0)
    UP0: [[0.0, 0.0], [0.0, 2.0]],
    DOWN0: [[0.0, 0.0], [0.0, 0.0]],
    Q1: [[1.0, 0.0], [0.0, 0.0]],
}


def _save(folder: Path, tensors: dict, config: dict | None = None, dtype=torch.float32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.tensor(v, dtype=dtype) for k, v in tensors.items()}, folder / "model.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _plus(a: dict, d: dict) -> dict:
    return {k: (np.array(a[k]) + np.array(d[k])).tolist() for k in a}


def _adapter(folder: Path, pairs: dict, alpha: float = 2.0, r: int = 1) -> Path:
    """A peft LoRA adapter folder: ``pairs`` maps a module path to its (A, B) factors; dW = alpha / r * B @ A."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in pairs.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.tensor(a)
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.tensor(b)
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha}))
    return folder


def _rows(df) -> dict:
    return {
        (int(la), b, m, p, q): v
        for la, b, m, p, q, v in zip(df.layer, df.block, df.module, df.param, df.quantity, df.value)
    }


# ---------------------------------------------------------------------------------------------------- options


def test_the_default_options_are_the_documented_ones():
    cfg = DiffConfig()
    assert cfg.svd == 0 and cfg.threads is None and cfg.run is None
    assert cfg.allow_missing is False and cfg.allow_pickle is False and cfg.progress is False
    assert cfg.chunk_elems * 4 == 1 << 20  # "1 MiB of float32"
    assert cfg.svd_exact_max == 1024


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"svd": -1}, "svd must be a number of singular values >= 0 (0 = off), got -1"),
        ({"svd": 2.0}, "svd must be a number of singular values >= 0 (0 = off), got 2.0"),
        ({"threads": 0}, "threads must be >= 1 or None (use torch's thread count), got 0"),
        ({"threads": 1.5}, "threads must be >= 1 or None (use torch's thread count), got 1.5"),
        ({"chunk_elems": 1023}, "chunk_elems must be an int >= 1024, got 1023"),
        ({"chunk_elems": 2048.0}, "chunk_elems must be an int >= 1024, got 2048.0"),
        ({"svd_exact_max": 0}, "svd_exact_max must be >= 1, got 0"),
    ],
)
def test_bad_options_are_refused_with_what_was_given(options, message):
    with pytest.raises(ValueError) as e:
        DiffConfig(**options)
    assert str(e.value) == message


def test_the_smallest_allowed_options_are_accepted():
    cfg = DiffConfig(svd=0, threads=1, chunk_elems=1024, svd_exact_max=1)
    assert (cfg.svd, cfg.threads, cfg.chunk_elems, cfg.svd_exact_max) == (0, 1, 1024, 1)


def test_config_and_keyword_options_together_are_refused(tmp_path):
    a = _save(tmp_path / "A", A)
    with pytest.raises(ValueError) as e:
        diff_checkpoints(a, a, config=DiffConfig(), svd=2, run="x")
    assert str(e.value) == "pass either config= or keyword options, not both; got config and ['run', 'svd']"


def test_a_config_object_is_used_as_given(tmp_path):
    a, b = _save(tmp_path / "A", A), _save(tmp_path / "B", _plus(A, DELTA))
    df = diff_checkpoints(a, b, config=DiffConfig(svd=1, run="given", chunk_elems=1024))
    assert set(df.run) == {"given"}
    assert _rows(df)[(0, "mlp", "up_proj", UP0, "sv_1")] == pytest.approx(2.0)


def test_a_third_checkpoint_without_a_second_is_refused(tmp_path):
    a = _save(tmp_path / "A", A)
    with pytest.raises(ValueError, match=r"^a third checkpoint needs a second one: layerprobe diff A B C$"):
        diff_checkpoints(a, None, a)


def test_an_adapter_first_or_one_full_checkpoint_alone_is_refused(tmp_path):
    a = _save(tmp_path / "A", A)
    ad = _adapter(tmp_path / "ad", {"model.layers.0.mlp.up_proj": ([[1.0, 0.0]], [[0.0], [1.0]])})
    with pytest.raises(ValueError) as e:
        diff_checkpoints(ad, a)
    assert str(e.value) == (
        f"the first checkpoint must hold full weights, got the adapter {ad}: an adapter's update is relative to its "
        "base; pass the base first (layerprobe diff BASE ADAPTER)"
    )
    with pytest.raises(ValueError) as e:
        diff_checkpoints(a)
    assert str(e.value) == (
        f"one checkpoint given ({a}): pass two or three checkpoints to compare, "
        "or one peft adapter folder to measure its update dW"
    )


def test_nothing_in_common_is_an_error_naming_the_checkpoints(tmp_path):
    a = _save(tmp_path / "A", {UP0: A[UP0]})
    b = _save(tmp_path / "B", {DOWN0: A[DOWN0]})
    with pytest.raises(ValueError) as e:
        diff_checkpoints(a, b, allow_missing=True)
    assert str(e.value) == f"nothing to diff in {a}, {b}: no tensors in common"
    empty = tmp_path / "empty"
    empty.mkdir()
    save_file({"base_model.model.lm_head.weight": torch.ones(2, 2)}, empty / "adapter_model.safetensors")
    (empty / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1}))
    with pytest.raises(ValueError) as e:
        diff_checkpoints(empty)  # modules_to_save only: no LoRA pair to measure
    assert str(e.value) == (
        f"nothing to diff in {empty}: no tensors in common (and an adapter alone is measured by its LoRA pairs only)"
    )


def test_the_threads_option_and_torch_s_own_count_are_restored(tmp_path):
    a, b = _save(tmp_path / "A", A), _save(tmp_path / "B", _plus(A, DELTA))
    before = torch.get_num_threads()
    diff_checkpoints(a, b, threads=3)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        diff_checkpoints(a, _save(tmp_path / "C", {UP0: [[1.0, 2.0, 3.0]]}))  # mismatched: fails before reading
    assert torch.get_num_threads() == before


def test_the_progress_bar_goes_to_stderr(tmp_path, capsys):
    a, b = _save(tmp_path / "A", A), _save(tmp_path / "B", _plus(A, DELTA))
    diff_checkpoints(a, b, progress=True)
    captured = capsys.readouterr()
    # tqdm's line: "diff: 100%|...| 3/3 [00:00<00:00, 1.2e+03tensor/s]" (s/tensor when slower than one a second)
    assert re.search(r"(^|\r)diff: 100%\|.*\| 3/3 \[.*(tensor/s|s/tensor)\]", captured.err) and captured.out == ""
    diff_checkpoints(a, b)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------------- names


def test_the_run_is_named_after_the_checkpoints_newest_first(tmp_path):
    a = _save(tmp_path / "base.v1", A)
    save_file({k: torch.tensor(v) for k, v in _plus(A, DELTA).items()}, tmp_path / "cpt.safetensors")
    save_file({k: torch.tensor(v) for k, v in A.items()}, tmp_path / "sft.safetensors")
    df = diff_checkpoints(a, tmp_path / "cpt.safetensors", tmp_path / "sft.safetensors")
    assert set(df.run) == {"sft_vs_cpt_vs_base.v1"}  # a folder keeps its whole name, a file loses its suffix
    assert set(df.phase) == {"diff"} and set(df.step) == {-1}
    assert (str(df.step.dtype), str(df.layer.dtype), str(df.value.dtype)) == ("int64", "int64", "float64")


@pytest.mark.parametrize(
    ("path", "short"),
    [("x/m.safetensors", "m"), ("m.bin", "m"), ("m.pt", "m"), ("m.pth", "m"), ("x/ckpt.v2", "ckpt.v2"), ("dir", "dir")],
)
def test_short_names_drop_only_checkpoint_suffixes(path, short):
    assert diff_mod._short(path) == short


# ---------------------------------------------------------------------------------------------------- numbers


def test_two_way_rows_per_tensor_and_per_level_by_hand(tmp_path):
    a, b = _save(tmp_path / "A", A), _save(tmp_path / "B", _plus(A, DELTA))
    rows = _rows(diff_checkpoints(a, b))
    assert rows[(0, "mlp", "up_proj", UP0, "delta_norm")] == 2.0
    assert rows[(0, "mlp", "up_proj", UP0, "rel_change")] == pytest.approx(2 / 5)
    assert rows[(0, "mlp", "down_proj", DOWN0, "delta_norm")] == 0.0
    assert rows[(1, "attn", "q_proj", Q1, "norm_b")] == pytest.approx(math.sqrt(5))
    # module, (layer, block) and the whole model: sums of squares over their tensors
    assert rows[(0, "mlp", "up_proj", "", "norm_a")] == 5.0
    assert rows[(0, "mlp", "", "", "norm_a")] == pytest.approx(math.sqrt(26))
    assert rows[(0, "mlp", "", "", "delta_norm")] == 2.0
    assert rows[(1, "attn", "", "", "delta_norm")] == 1.0
    assert rows[(-1, "", "", "", "norm_a")] == pytest.approx(math.sqrt(30))
    assert rows[(-1, "", "", "", "delta_norm")] == pytest.approx(math.sqrt(5))
    assert rows[(-1, "", "", "", "rel_change")] == pytest.approx(math.sqrt(5 / 30))
    levels = {k[:3] for k in rows if k[3] == ""}
    assert levels == {
        (0, "mlp", "up_proj"),
        (0, "mlp", "down_proj"),
        (0, "mlp", ""),
        (1, "attn", "q_proj"),
        (1, "attn", ""),
        (-1, "", ""),
    }


def test_three_way_rows_by_hand_with_the_second_change_undoing_half_of_the_first(tmp_path):
    half_back = {k: (-0.5 * np.array(v)).tolist() for k, v in DELTA.items()}
    b_w = _plus(A, DELTA)
    a, b, c = _save(tmp_path / "A", A), _save(tmp_path / "B", b_w), _save(tmp_path / "C", _plus(b_w, half_back))
    df = diff_checkpoints(a, b, c, svd=2)
    rows = _rows(df)
    assert df.attrs["mode"] == "three"
    assert rows[(0, "mlp", "up_proj", UP0, "undo_frac")] == pytest.approx(0.5)
    assert rows[(0, "mlp", "up_proj", UP0, "delta_norm_bc")] == pytest.approx(1.0)
    assert rows[(0, "mlp", "up_proj", UP0, "cos_cpt_sft")] == pytest.approx(-1.0)
    assert rows[(-1, "", "", "", "undo_frac")] == pytest.approx(0.5)
    # the null of an unrelated second change: per tensor 1 / sqrt(n) for cos (n = 4 elements, section null)
    assert rows[(0, "mlp", "up_proj", UP0, "null_sd_cos")] == pytest.approx(0.5)
    # spectra of both changes, the second with the _bc suffix: up_proj's changes are rank 1
    assert rows[(0, "mlp", "up_proj", UP0, "sv_1")] == pytest.approx(2.0)
    assert rows[(0, "mlp", "up_proj", UP0, "sv_2")] == pytest.approx(0.0, abs=1e-6)
    assert rows[(0, "mlp", "up_proj", UP0, "rank90")] == 1.0
    assert rows[(0, "mlp", "up_proj", UP0, "sv_1_bc")] == pytest.approx(1.0)
    assert rows[(0, "mlp", "up_proj", UP0, "rank90_bc")] == 1.0
    assert (0, "mlp", "up_proj", UP0, "sv_3") not in rows  # at most the short side
    assert (0, "mlp", "up_proj", UP0, "sv_1_ab") not in rows
    assert not any(k[4].startswith("sv_") and k[3] == "" for k in rows)  # spectra per tensor only


def test_an_adapter_measured_alone_and_on_its_base_with_tensors_it_leaves_alone(tmp_path):
    # dW = 2 / 1 * B @ A = 2 * [[0], [1]] @ [[1, 0]] = [[0, 0], [2, 0]]: norm 2, one singular value 2
    ad = _adapter(tmp_path / "ad", {"model.layers.1.self_attn.q_proj": ([[1.0, 0.0]], [[0.0], [1.0]])})
    alone = diff_checkpoints(ad, svd=3)
    assert alone.attrs["mode"] == "delta" and alone.attrs["skipped"] == [] and alone.attrs["tied"] == []
    rows = _rows(alone)
    assert rows[(1, "attn", "q_proj", Q1, "delta_norm")] == pytest.approx(2.0)
    assert rows[(1, "attn", "q_proj", Q1, "sv_1")] == pytest.approx(2.0)
    assert rows[(1, "attn", "q_proj", Q1, "rank90")] == 1.0
    a = _save(tmp_path / "A", A)
    rows = _rows(diff_checkpoints(a, ad, svd=3))
    assert rows[(1, "attn", "q_proj", Q1, "delta_norm")] == pytest.approx(2.0)
    assert rows[(1, "attn", "q_proj", Q1, "sv_1")] == pytest.approx(2.0)
    # the adapter leaves up_proj alone: a zero change, zero singular values (two: the short side) and rank90 0
    assert rows[(0, "mlp", "up_proj", UP0, "delta_norm")] == 0.0
    assert [rows.get((0, "mlp", "up_proj", UP0, f"sv_{i}")) for i in (1, 2, 3)] == [0.0, 0.0, None]
    assert rows[(0, "mlp", "up_proj", UP0, "rank90")] == 0.0
    one = _rows(diff_checkpoints(a, ad, svd=1))  # one value asked for: one zero
    assert [one.get((0, "mlp", "up_proj", UP0, f"sv_{i}")) for i in (1, 2)] == [0.0, None]


def test_an_adapter_s_rows_come_in_layer_order(tmp_path):
    pair = ([[1.0, 0.0]], [[0.0], [1.0]])
    modules = ["model.layers.10.mlp.up_proj", "model.layers.2.mlp.up_proj", "lm_head"]
    df = diff_checkpoints(_adapter(tmp_path / "ad", dict.fromkeys(modules, pair)))
    params = list(dict.fromkeys(p for p in df.param if p))
    assert params == ["lm_head.weight", "model.layers.2.mlp.up_proj.weight", "model.layers.10.mlp.up_proj.weight"]


def test_two_checkpoints_are_read_in_the_order_the_file_stores_them(tmp_path):
    a, b = _save(tmp_path / "A", A), _save(tmp_path / "B", _plus(A, DELTA))
    df = diff_checkpoints(a, b)
    params = list(dict.fromkeys(p for p in df.param if p))
    # safetensors stores tensors sorted by name; the rows follow the file, not the layers
    assert params == sorted(A)


# ---------------------------------------------------------------------------------------------------- tied heads


def _tied_pair(tmp_path, head_config: dict | None, emb_dtype=torch.float32):
    emb = [[1.0, 2.0], [3.0, 4.0]]
    bare = _save(tmp_path / "bare", {"model.embed_tokens.weight": emb}, config=head_config)
    both = tmp_path / "both"
    both.mkdir()
    save_file(
        {
            "model.embed_tokens.weight": torch.tensor(emb, dtype=emb_dtype),
            "lm_head.weight": torch.tensor(emb, dtype=torch.float32),
        },
        both / "model.safetensors",
    )
    return bare, both


def test_a_head_missing_where_the_config_ties_it_is_the_embedding(tmp_path):
    bare, both = _tied_pair(tmp_path, {"tie_word_embeddings": True})
    df = diff_checkpoints(bare, both)
    assert df.attrs["tied"] == [f"{bare}: lm_head.weight tied to model.embed_tokens.weight"]
    assert _rows(df)[(-1, "head", "lm_head", "lm_head.weight", "delta_norm")] == 0.0
    nested, _ = _tied_pair(tmp_path / "n", {"text_config": {"tie_word_embeddings": True}})
    assert diff_checkpoints(nested, both).attrs["tied"] == [
        f"{nested}: lm_head.weight tied to model.embed_tokens.weight"
    ]


def test_a_head_is_not_tied_to_an_embedding_stored_in_another_dtype(tmp_path):
    bare, both = _tied_pair(tmp_path, None, emb_dtype=torch.float16)  # equal values, but not the same bytes
    with pytest.raises(ValueError, match="lm_head.weight: in .*both, not in .*bare"):
        diff_checkpoints(bare, both)
    df = diff_checkpoints(bare, both, allow_missing=True)
    assert df.attrs["tied"] == [] and df.attrs["skipped"] == [f"lm_head.weight: in {both}, not in {bare}"]


def test_each_spectrum_is_asked_for_svd_values_with_the_configured_exact_max(tmp_path, monkeypatch):
    asked = []

    def fake(name):
        def spectrum(*args):
            asked.append((name, *args[-2:]))
            return np.array([7.0]), 1

        return spectrum

    monkeypatch.setattr(diff_mod, "spectrum", fake("dense"))
    monkeypatch.setattr(diff_mod, "lora_spectrum", fake("lora"))
    a, b = _save(tmp_path / "A", {UP0: A[UP0]}), _save(tmp_path / "B", {UP0: _plus(A, DELTA)[UP0]})
    rows = _rows(diff_checkpoints(a, b, svd=1, svd_exact_max=3))
    assert asked == [("dense", 1, 3)] and rows[(0, "mlp", "up_proj", UP0, "sv_1")] == 7.0
    asked.clear()
    ad = _adapter(tmp_path / "ad", {"model.layers.0.mlp.up_proj": ([[1.0, 0.0]], [[0.0], [1.0]])})
    diff_checkpoints(a, ad, svd=2, svd_exact_max=3)
    assert [x[0] for x in asked] == ["lora"] and asked[0][-1] == 2


def test_a_head_differing_from_the_embedding_in_its_first_element_is_not_tied_to_it(tmp_path):
    emb = [[1.0, 2.0], [3.0, 4.0]]
    bare = _save(tmp_path / "bare", {"model.embed_tokens.weight": emb})
    both = _save(tmp_path / "both", {"model.embed_tokens.weight": emb, "lm_head.weight": [[9.0, 2.0], [3.0, 4.0]]})
    assert diff_checkpoints(bare, both, allow_missing=True).attrs["tied"] == []


# ---------------------------------------------------------------------------------------------------- more exact checks


def test_the_group_nulls_sum_each_tensor_s_term_before_the_ratio(tmp_path):
    bias = "model.layers.0.mlp.up_proj.bias"  # a second tensor in up_proj's (layer, block, module)
    a_w = {**A, bias: [1.0, 0.0]}
    delta = {**DELTA, bias: [0.0, 1.0]}
    back = {k: (-0.5 * np.array(v)).tolist() for k, v in delta.items()}
    b_w = _plus(a_w, delta)
    c_w = _plus(b_w, back)
    rows = _rows(diff_checkpoints(_save(tmp_path / "A", a_w), _save(tmp_path / "B", b_w), _save(tmp_path / "C", c_w)))

    def expect(names):  # the plain formula: sum_i |x_i|^2 |e_i|^2 / d_i over the group's tensors
        x = {n: np.array(delta[n]) for n in names}
        e = {n: np.array(back[n]) for n in names}
        var = sum((x[n] ** 2).sum() * (e[n] ** 2).sum() / x[n].size for n in names)
        xx, ee = sum((x[n] ** 2).sum() for n in names), sum((e[n] ** 2).sum() for n in names)
        return math.sqrt(var) / math.sqrt(xx * ee), math.sqrt(var) / xx

    for key, names in [
        ((0, "mlp", "up_proj"), [UP0, bias]),
        ((0, "mlp", ""), [UP0, bias, DOWN0]),
        ((1, "attn", ""), [Q1]),
        ((-1, "", ""), list(a_w)),
    ]:
        cos, undo = expect(names)
        assert rows[(*key, "", "null_sd_cos")] == pytest.approx(cos, rel=1e-6), key
        assert rows[(*key, "", "null_sd_undo_frac")] == pytest.approx(undo, rel=1e-6), key


def test_only_the_deltas_whose_spectrum_is_asked_for_are_kept_whole_on_one_thread_each(tmp_path, monkeypatch):
    seen = []
    gram = diff_mod.GramEngine.gram

    def spy(self, ops, shape, keep):
        seen.append((len(shape), list(keep), torch.get_num_threads()))
        return gram(self, ops, shape, keep)

    monkeypatch.setattr(diff_mod.GramEngine, "gram", spy)
    bias = "model.layers.0.mlp.up_proj.bias"
    a_w = {UP0: A[UP0], bias: [1.0, 0.0]}
    b_w = _plus(a_w, {UP0: DELTA[UP0], bias: [0.0, 1.0]})
    a, b = _save(tmp_path / "A", a_w), _save(tmp_path / "B", b_w)
    diff_checkpoints(a, b)
    assert sorted(seen) == [(1, [False, False], 1), (2, [False, False], 1)]
    seen.clear()
    diff_checkpoints(a, b, b, svd=2)  # a matrix's two changes are kept for their spectra, a bias's never
    assert sorted(seen) == [(1, [False, False, False], 1), (2, [False, True, True], 1)]
    seen.clear()
    ad = _adapter(tmp_path / "ad", {"model.layers.1.self_attn.q_proj": ([[1.0, 0.0]], [[0.0], [1.0]])})
    diff_checkpoints(_save(tmp_path / "A3", A), ad, svd=2)  # LoRA factors give their spectrum, untouched ones zeros
    assert [k for _, k, _ in seen] == [[False, False]] * 3


@pytest.mark.parametrize("base_shape", [(2, 3), (3, 2)])  # nn.Linear's (out, in) and GPT-2 Conv1D's (in, out)
def test_an_adapter_follows_its_base_layout_whatever_its_fan_in_fan_out_says(tmp_path, base_shape):
    lora_a, lora_b = [[1.0, 2.0, 0.0]], [[0.0], [3.0]]  # r 1: dW = 2 * B @ A, (out 2, in 3)
    dw = 2.0 * np.array(lora_b) @ np.array(lora_a)
    if base_shape == (3, 2):
        dw = dw.T
    base = np.arange(6.0).reshape(base_shape)
    a = _save(tmp_path / "A", {UP0: base.tolist()})
    for flag in (True, False):
        ad = _adapter(tmp_path / f"ad{flag}", {"model.layers.0.mlp.up_proj": (lora_a, lora_b)})
        cfg = json.loads((ad / "adapter_config.json").read_text())
        (ad / "adapter_config.json").write_text(json.dumps({**cfg, "fan_in_fan_out": flag}))
        rows = _rows(diff_checkpoints(a, ad))
        assert rows[(0, "mlp", "up_proj", UP0, "delta_norm")] == pytest.approx(np.linalg.norm(dw))
        assert rows[(0, "mlp", "up_proj", UP0, "norm_b")] == pytest.approx(np.linalg.norm(base + dw))


def test_checkpoints_that_do_not_line_up_are_named_in_one_message(tmp_path):
    a = _save(tmp_path / "A", {UP0: A[UP0], DOWN0: A[DOWN0]})
    b = _save(tmp_path / "B", {UP0: A[UP0], Q1: A[Q1]})
    with pytest.raises(ValueError) as e:
        diff_checkpoints(a, b)
    assert str(e.value) == (
        f"the checkpoints do not line up: 2 missing, extra or mismatched tensors; first 2: {DOWN0}: in {a}, not in "
        f"{b}; {Q1}: in {b}, not in {a}; pass --allow-missing (allow_missing=True) to diff the tensors they share"
    )


def test_each_head_is_tied_on_its_own(tmp_path):
    emb = [[1.0, 2.0], [3.0, 4.0]]
    tie = {"tie_word_embeddings": True}
    both = _save(tmp_path / "both", {"model.embed_tokens.weight": emb, "lm_head.weight": emb, "lm_head.bias": [0, 1]})
    # a head bias the checkpoint lacks (no embedding of its shape) comes first and leaves the weight's tie alone
    bare = _save(tmp_path / "bare", {"model.embed_tokens.weight": emb}, config=tie)
    df = diff_checkpoints(bare, both, allow_missing=True)
    assert df.attrs["tied"] == [f"{bare}: lm_head.weight tied to model.embed_tokens.weight"]
    assert df.attrs["skipped"] == [f"lm_head.bias: in {both}, not in {bare}"]
    # a head bias the checkpoint has comes first too
    biased = _save(tmp_path / "biased", {"model.embed_tokens.weight": emb, "lm_head.bias": [0, 1]}, config=tie)
    assert diff_checkpoints(biased, both).attrs["tied"] == [
        f"{biased}: lm_head.weight tied to model.embed_tokens.weight"
    ]
