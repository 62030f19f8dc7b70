"""Selector grammar, budgets, requires_grad masks, LoRA targets and the frozen-weights audit.

Every expectation is computed by plain Python over parameter names (regexes on the raw names, sums of
shapes), independently of layerprobe.core.names.
"""

from __future__ import annotations

import random
import re
from itertools import accumulate

import pytest
from conftest import make_tiny_llama
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from layerprobe.train.select import (
    All,
    And,
    Block,
    Budget,
    Layers,
    Modules,
    Not,
    Or,
    Regex,
    apply_requires_grad,
    frozen_moved,
    lora_targets,
    parse_selector,
    select_params,
)

N_LAYERS = 6
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
# tiny Llama, hidden 32, vocab 64, 2 of 4 heads for k/v: one layer holds 4 linears of attention
# (1024 + 512 + 512 + 1024), 3 of MLP (3 * 2048) and 2 norms (2 * 32) = 9280 of 59808 parameters (15.5 %)
LAYER_NUMEL, TOTAL = 9280, 6 * 9280 + 2048 + 2048 + 32


def layer_of(name: str) -> int:
    m = re.search(r"\.(?:layers|h)\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def llama_shapes(layers: int = N_LAYERS, hidden: int = 32, vocab: int = 64) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) pairs of make_tiny_llama, written out by hand."""
    kv, inter = hidden // 2, 2 * hidden
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    return out + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def gpt2_shapes(layers: int = 4, d: int = 8, vocab: int = 50) -> list[tuple[str, tuple[int, ...]]]:
    out = [("transformer.wte.weight", (vocab, d)), ("transformer.wpe.weight", (16, d))]
    for i in range(layers):
        p = f"transformer.h.{i}."
        out += [
            (p + "ln_1.weight", (d,)),
            (p + "ln_1.bias", (d,)),
            (p + "attn.c_attn.weight", (d, 3 * d)),
            (p + "attn.c_attn.bias", (3 * d,)),
            (p + "attn.c_proj.weight", (d, d)),
            (p + "attn.c_proj.bias", (d,)),
            (p + "ln_2.weight", (d,)),
            (p + "ln_2.bias", (d,)),
            (p + "mlp.c_fc.weight", (d, 4 * d)),
            (p + "mlp.c_fc.bias", (4 * d,)),
            (p + "mlp.c_proj.weight", (4 * d, d)),
            (p + "mlp.c_proj.bias", (d,)),
        ]
    return out + [("transformer.ln_f.weight", (d,)), ("transformer.ln_f.bias", (d,))]


def neox_shapes(layers: int = 3, d: int = 8, vocab: int = 50) -> list[tuple[str, tuple[int, ...]]]:
    out = [("gpt_neox.embed_in.weight", (vocab, d))]
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out += [(p + norm + ".weight", (d,)), (p + norm + ".bias", (d,))]
        for mod, shape in (
            ("attention.query_key_value", (3 * d, d)),
            ("attention.dense", (d, d)),
            ("mlp.dense_h_to_4h", (4 * d, d)),
            ("mlp.dense_4h_to_h", (d, 4 * d)),
        ):
            out += [(p + mod + ".weight", shape), (p + mod + ".bias", (shape[0],))]
    return out + [
        ("gpt_neox.final_layer_norm.weight", (d,)),
        ("gpt_neox.final_layer_norm.bias", (d,)),
        ("embed_out.weight", (vocab, d)),
    ]


def numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def reference_budget(shapes, end: str, percent: float | None = None, count: int | None = None, seed: int = 0):
    """The budget rule written plainly: k = the count of whole layers whose share is nearest the target."""
    total = sum(numel(s) for _, s in shapes)
    sizes = {}
    for n, s in shapes:
        if layer_of(n) >= 0:
            sizes[layer_of(n)] = sizes.get(layer_of(n), 0) + numel(s)
    order = sorted(sizes)
    if end == "last":
        order.reverse()
    if end == "random":
        random.Random(seed).shuffle(order)
    cum = list(accumulate(sizes[i] / total for i in order))
    if count is None:
        count = min(range(1, len(order) + 1), key=lambda j: (abs(cum[j - 1] - percent / 100), j))
    k = count
    return set(order[:k]), cum[k - 1]


def rand_order(seed: int, n: int = N_LAYERS) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


LLAMA_CASES = [
    ("mlp", lambda n: ".mlp." in n),
    ("attn", lambda n: ".self_attn." in n),
    ("embed", lambda n: n == "model.embed_tokens.weight"),
    ("head", lambda n: n == "lm_head.weight"),
    ("norm", lambda n: "norm" in n),
    ("all", lambda n: True),
    ("mlp+head", lambda n: ".mlp." in n or n == "lm_head.weight"),
    ("not mlp", lambda n: ".mlp." not in n),
    ("not (mlp + head)", lambda n: ".mlp." not in n and n != "lm_head.weight"),
    ("not mlp & not attn", lambda n: ".mlp." not in n and ".self_attn." not in n),
    ("attn + mlp & layers:5", lambda n: ".self_attn." in n or (".mlp." in n and layer_of(n) == 5)),
    ("(attn + mlp) & layers:5", lambda n: (".self_attn." in n or ".mlp." in n) and layer_of(n) == 5),
    ("layers:0-1,4", lambda n: layer_of(n) in (0, 1, 4)),
    ("mlp & layers:0-2", lambda n: ".mlp." in n and layer_of(n) in (0, 1, 2)),
    ("module:q_proj,v_proj", lambda n: n.endswith(("q_proj.weight", "v_proj.weight"))),
    ("module:embed_tokens,lm_head", lambda n: n in ("model.embed_tokens.weight", "lm_head.weight")),
    (r"regex:layers\.[02]\..*_proj", lambda n: layer_of(n) in (0, 2) and "_proj" in n),
    (r"not(regex:.*\.(q|v)_proj\..*)", lambda n: not re.search(r"\.(q|v)_proj\.", n)),
    ("regex:'^model\\.norm' + head", lambda n: n in ("model.norm.weight", "lm_head.weight")),
    ("first:2", lambda n: layer_of(n) in (0, 1)),
    ("last:1 + head", lambda n: layer_of(n) == 5 or n == "lm_head.weight"),
    # one layer is 15.5 %: 30 % -> 2 layers (31.0 %); 40 % -> 3 layers (46.5 %, 6.5 away) rather than 2 (9 away)
    ("first:30%", lambda n: layer_of(n) in (0, 1)),
    ("first:35%", lambda n: layer_of(n) in (0, 1)),  # 31.0 % is nearer than 46.5 %
    ("last:40%", lambda n: layer_of(n) in (3, 4, 5)),
    ("random:40%@seed=2", lambda n: layer_of(n) in rand_order(2)[:3]),
    ("random:2@seed=7 & attn", lambda n: layer_of(n) in rand_order(7)[:2] and ".self_attn." in n),
]


@pytest.fixture(scope="module")
def llama():
    return make_tiny_llama(layers=N_LAYERS)


@pytest.mark.parametrize("spec,expect", LLAMA_CASES, ids=[c[0] for c in LLAMA_CASES])
def test_llama_cases(llama, spec, expect):
    names = [n for n, _ in llama.named_parameters()]
    want = {n for n in names if expect(n)}
    sel = select_params(llama, spec)
    assert sel.names == want
    unique = {n: p.numel() for n, p in llama.named_parameters()}
    assert sel.total == sum(unique.values()) == TOTAL
    assert sel.trainable == sum(unique[n] for n in want)
    assert sel.share == pytest.approx(sel.trainable / TOTAL)
    assert sel.layers == tuple(sorted({layer_of(n) for n in want} - {-1}))
    assert select_params(llama_shapes(), spec).names == want  # (name, shape) pairs give the same answer
    assert select_params(llama.named_parameters(), spec).names == want


def test_budget_numbers_and_describe(llama):
    sel = select_params(llama, "first:30%")
    assert sel.trainable == 2 * LAYER_NUMEL
    assert [(b.term, b.layers, b.target) for b in sel.budgets] == [("first:30%", (0, 1), 0.30)]
    assert sel.budgets[0].share == pytest.approx(2 * LAYER_NUMEL / TOTAL)
    assert sel.describe() == (
        "first:30% -> layers 0-1 (2 of 6), 31.0 % of 59.8 k parameters trainable; "
        "first:30% took layers 0-1 = 31.0 %, target 30.0 %"
    )
    assert (
        select_params(llama, "embed").describe()
        == "embed -> no decoder layer (of 6), 3.4 % of 59.8 k parameters trainable"
    )


GPT2_CASES = [
    ("mlp", lambda n: ".mlp." in n),
    ("attn", lambda n: ".attn." in n),
    ("embed", lambda n: n in ("transformer.wte.weight", "transformer.wpe.weight")),
    ("norm", lambda n: ".ln_" in n),
    ("module:c_proj", lambda n: ".c_proj." in n),
    ("module:c_proj & mlp", lambda n: ".mlp.c_proj." in n),
    ("layers:1 & not norm", lambda n: layer_of(n) == 1 and ".ln_" not in n),
    ("first:50%", None),
    ("last:2 + embed", lambda n: layer_of(n) in (2, 3) or ".wte." in n or ".wpe." in n),
]
NEOX_CASES = [
    ("attn", lambda n: ".attention." in n),
    ("mlp", lambda n: ".mlp." in n),
    ("head", lambda n: n == "embed_out.weight"),
    ("embed + head", lambda n: n in ("gpt_neox.embed_in.weight", "embed_out.weight")),
    ("module:dense", lambda n: ".attention.dense." in n),
    ("not (attn + mlp)", lambda n: ".attention." not in n and ".mlp." not in n),
    ("last:60%", None),
    ("random:30%@seed=1", None),
]


@pytest.mark.parametrize(
    "shapes,spec,expect",
    [(gpt2_shapes(), s, e) for s, e in GPT2_CASES] + [(neox_shapes(), s, e) for s, e in NEOX_CASES],
    ids=[f"gpt2:{s}" for s, _ in GPT2_CASES] + [f"neox:{s}" for s, _ in NEOX_CASES],
)
def test_named_shape_cases(shapes, spec, expect):
    sel = select_params(shapes, spec)
    if expect is None:  # a percentage budget: compare with the plain rule
        b = parse_selector(spec)
        layers, share = reference_budget(shapes, b.end, percent=b.amount, seed=b.seed or 0)
        expect = lambda n: layer_of(n) in layers
        assert sel.share == pytest.approx(share)
    want = {n for n, _ in shapes if expect(n)}
    assert sel.names == want
    assert sel.trainable == sum(numel(s) for n, s in shapes if n in want)
    assert sel.total == sum(numel(s) for _, s in shapes)


ROUND_TRIPS = [
    ("mlp+head", "mlp + head"),
    ("not  mlp", "not mlp"),
    ("module:v_proj,q_proj", "module:q_proj,v_proj"),
    ("layers:3,0-2,10", "layers:0-3,10"),
    ("first:10%", "first:10%"),
    ("last:2.5%", "last:2.5%"),
    ("random:10%@seed=2", "random:10%@seed=2"),
    ("mlp & layers:0-3 + head", "mlp & layers:0-3 + head"),
    ("not(mlp+head)", "not (mlp + head)"),
    ("(mlp+attn)+head", "(mlp + attn) + head"),
    (r"not(regex:.*\.(q|v)_proj\..*)", r"not regex:.*\.(q|v)_proj\..*"),
    ("regex:'a b'+mlp", "regex:'a b' + mlp"),
    ("(regex:a\\))", "regex:a\\)"),
    ("not not attn", "not not attn"),
]


@pytest.mark.parametrize("spec,text", ROUND_TRIPS)
def test_str_round_trips(spec, text):
    node = parse_selector(spec)
    assert str(node) == text
    assert parse_selector(text) == node


def test_precedence_and_python_operators():
    mlp, attn, head = Block("mlp"), Block("attn"), Block("head")
    assert parse_selector("not mlp & attn + head") == Or((And((Not(mlp), attn)), head))
    assert mlp + attn + head == parse_selector("mlp + attn + head")
    assert ~mlp & Layers((0, 1)) == parse_selector("not mlp & layers:0-1")


ERRORS = [
    ("mpl+head", "unknown selector term 'mpl' in 'mpl+head': expected one of embed, attn, mlp"),
    ("mpl+head", "did you mean 'mlp'?"),
    ("frist:10%", "did you mean 'first:10%'?"),
    ("q_proj", "for a module name write module:q_proj"),
    ("mlp+", "expected a term, 'not' or '(', got the end"),
    ("mlp head", "expected '+', '&' or the end, got 'head' at position 4"),
    ("(mlp", "expected ')'"),
    ("random:10%", "random: needs a seed"),
    ("first:10%@seed=1", "only random: takes a seed"),
    ("first:0%", "in (0, 100] %"),
    ("first:120%", "in (0, 100] %"),
    ("last:x", "expects a share of all parameters such as last:10%"),
    ("layers:3-1", "increasing inclusive ranges"),
    ("regex:(", "is not one"),
    ("regex:'abc", "never closed"),
    ("module:", "module: expects comma-separated leaf module names"),
    ("", "expected a selector string"),
]


@pytest.mark.parametrize("spec,message", ERRORS)
def test_parse_errors(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_selector(spec)


MODEL_ERRORS = [
    ("first:10%", "first:10% is below one layer's share: layer 0, the first it would take, holds 15.5 %"),
    ("first:10%", "layer shares of all 59.8 k parameters: 0 15.5 %, 1 15.5 %, 2 15.5 %, 3 15.5 %, 4 15.5 %, 5 15.5 %"),
    ("first:95%", "asks for more than all 6 layers hold (93.1 %"),
    ("last:7", "asks for 7 layers but this model has 6"),
    ("other", "selector term 'other' matches no parameter; this model has blocks embed, attn, mlp, norm, head"),
    ("module:q_prj", "did you mean 'q_proj'?"),
    ("layers:4-7", "no layer 6-7 in this model; it has layers 0-5"),
    ("regex:nothing_here", "matches no parameter"),
    ("embed & mlp", "selector 'embed & mlp' matches no parameter (each term matches some"),
    ("not all + all & not all", "matches no parameter"),
]


@pytest.mark.parametrize("spec,message", MODEL_ERRORS)
def test_model_errors(llama, spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        select_params(llama, spec)


# ---------------------------------------------------------------------------------------------- properties

LLAMA_NAMES = frozenset(n for n, _ in llama_shapes())
_leaf = st.one_of(
    st.sampled_from([Block(b) for b in ("embed", "attn", "mlp", "norm", "head")] + [All()]),
    st.lists(st.integers(0, N_LAYERS - 1), min_size=1, max_size=4).map(lambda xs: Layers(tuple(xs))),
    st.lists(st.sampled_from(ATTN + MLP + ("lm_head", "input_layernorm")), min_size=1, max_size=3).map(
        lambda xs: Modules(tuple(xs))
    ),
    st.builds(
        lambda e, k, s: Budget(e, k, percent=False, seed=s if e == "random" else None),
        st.sampled_from(["first", "last", "random"]),
        st.integers(1, N_LAYERS),
        st.integers(0, 50),
    ),
    st.sampled_from([Regex(r"layers\.[13]\."), Regex("proj"), Regex(r"norm\.weight$"), Regex("'?(q|k)_proj")]),
)
selectors = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        inner.map(Not),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
    ),
    max_leaves=6,
)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _names_or_empty(spec) -> frozenset[str]:
    try:
        return select_params(llama_shapes(), spec).names
    except ValueError as e:
        assert "matches no parameter (each term matches some" in str(e)
        return frozenset()


@_SETTINGS
@given(selectors)
def test_selector_and_its_negation_partition_the_parameters(x):
    a, b = _names_or_empty(x), _names_or_empty(Not(x))
    assert not a & b
    assert a | b == LLAMA_NAMES


@_SETTINGS
@given(selectors)
def test_str_parses_back_to_the_same_selector(x):
    assert parse_selector(str(x)) == x


@_SETTINGS
@given(
    st.lists(
        st.sampled_from(["a", "\\.", "[ ]", "(q|v)", "x+", " ", "'", '"', "\\)", ".*", "&", "+", "[)]"]),
        min_size=1,
        max_size=6,
    ).map("".join)
)
def test_any_regex_round_trips(pattern):
    try:
        node = Regex(pattern) + Block("head")
    except ValueError:
        assume(False)
    assert parse_selector(str(node)) == node


@_SETTINGS
@given(
    sizes=st.lists(st.integers(1, 1000), min_size=1, max_size=12),
    outside=st.integers(0, 3000),
    percent=st.floats(0.01, 100),
    end=st.sampled_from(["first", "last", "random"]),
    seed=st.integers(0, 99),
)
def test_budget_lands_within_one_layer_of_its_target(sizes, outside, percent, end, seed):
    shapes = [(f"model.layers.{i}.mlp.up_proj.weight", (n,)) for i, n in enumerate(sizes)]
    shapes += [("model.embed_tokens.weight", (outside,))] if outside else []
    total = sum(sizes) + outside
    spec = Budget(end, percent, seed=seed if end == "random" else None)
    order = list(range(len(sizes)))
    if end == "last":
        order.reverse()
    elif end == "random":
        random.Random(seed).shuffle(order)
    target = percent / 100
    try:
        sel = select_params(shapes, spec)
    except ValueError as e:  # only a target below the first layer's share or above all layers' share
        first, everything = sizes[order[0]] / total, sum(sizes) / total
        assert target < first or target > everything, str(e)
        assert ("below one layer's share" if target < first else "more than all") in str(e)
        return
    k = len(sel.layers)
    assert set(sel.layers) == set(order[:k])
    assert sel.share == pytest.approx(sum(sizes[i] for i in order[:k]) / total)
    boundary = max(sizes[i] for i in order[max(k - 1, 0) : k + 1]) / total
    assert abs(sel.share - target) <= boundary / 2 + 1e-12  # within half of a layer next to the cut
    for j in range(1, len(sizes) + 1):  # and no other number of layers comes nearer
        assert abs(sel.share - target) <= abs(sum(sizes[i] for i in order[:j]) / total - target) + 1e-12


@_SETTINGS
@given(seed=st.integers(0, 10_000), count=st.integers(1, N_LAYERS))
def test_a_seed_gives_the_same_choice_every_time(seed, count):
    spec = f"random:{count}@seed={seed}"
    first = select_params(llama_shapes(), spec)
    again = select_params(llama_shapes(), parse_selector(str(parse_selector(spec))))
    assert first.names == again.names and first.layers == again.layers
    assert set(first.layers) == set(rand_order(seed)[:count])


def test_seeds_differ():
    choices = {select_params(llama_shapes(), f"random:2@seed={s}").layers for s in range(10)}
    assert len(choices) > 1


# ---------------------------------------------------------------------------------------------- training


def _train(model, steps: int = 3, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # every parameter, frozen ones too
    for _ in range(steps):
        ids = torch.randint(0, 64, (2, 12))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


def test_frozen_parameters_do_not_move(tmp_path):
    import torch

    model = make_tiny_llama(layers=N_LAYERS, seed=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.save_pretrained(tmp_path / "ref")
    sel = apply_requires_grad(model, "first:30%")
    want = {n for n in before if layer_of(n) in (0, 1)}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want == sel.names
    assert sel.trainable == sum(before[n].numel() for n in want) == 2 * LAYER_NUMEL
    assert sel.total == TOTAL and sel.share == pytest.approx(2 * LAYER_NUMEL / TOTAL)

    _train(model)
    after = dict(model.named_parameters())
    assert [n for n in before if n not in want and not torch.equal(before[n], after[n])] == []
    assert [n for n in want if torch.equal(before[n], after[n])] == []  # every trainable tensor moved
    assert frozen_moved(model, before) == []
    assert frozen_moved(model, tmp_path / "ref") == []
    torch.save(before, tmp_path / "ref.pt")
    assert frozen_moved(model, tmp_path / "ref.pt") == []

    with torch.no_grad():  # the check can fail: nudge one frozen element by one ulp
        w = after["model.layers.4.mlp.up_proj.weight"]
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))
    assert frozen_moved(model, before) == ["model.layers.4.mlp.up_proj.weight"]
    assert frozen_moved(model, tmp_path / "ref") == ["model.layers.4.mlp.up_proj.weight"]


def test_tied_weights_train_together_and_count_once(tmp_path):
    import torch

    model = make_tiny_llama(layers=2, tie=True)
    unique_total = sum(p.numel() for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    sel = apply_requires_grad(model, "embed")
    assert sel.names == {"model.embed_tokens.weight", "lm_head.weight"}
    assert sel.tied == (("lm_head.weight", "model.embed_tokens.weight"),)
    assert "lm_head.weight trains with model.embed_tokens.weight (tied)" in sel.describe()
    assert sel.trainable == 64 * 32 and sel.total == unique_total
    assert select_params(model, "head").names == sel.names
    assert select_params(model, "not embed").names == {n for n, _ in model.named_parameters(remove_duplicate=False)}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.save_pretrained(tmp_path / "ref")  # stores the tied tensor under one name only
    _train(model)
    assert not torch.equal(before["model.embed_tokens.weight"], model.lm_head.weight)
    assert frozen_moved(model, tmp_path / "ref") == []
    assert frozen_moved(model, before) == []


def test_frozen_moved_needs_every_frozen_tensor():
    model = make_tiny_llama()
    apply_requires_grad(model, "mlp")
    with pytest.raises(ValueError, match="the reference has no tensor for frozen parameters"):
        frozen_moved(model, {})
    with pytest.raises(FileNotFoundError, match="no reference weights at"):
        frozen_moved(model, "/nonexistent/ref.safetensors")


# ---------------------------------------------------------------------------------------------- LoRA


def _adapted(model, targets: dict, **lora) -> set[str]:
    import copy

    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, **targets, **lora))
    return {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def _llama_modules(pred) -> set[str]:
    mods = {f"model.layers.{i}.self_attn.{m}" for i in range(N_LAYERS) for m in ATTN}
    mods |= {f"model.layers.{i}.mlp.{m}" for i in range(N_LAYERS) for m in MLP}
    return {m for m in mods | {"model.embed_tokens", "lm_head"} if pred(m)}


LORA_CASES = [  # spec, form peft gets, the modules that must carry adapters
    ("attn", list, None, lambda m: ".self_attn." in m),
    ("attn + mlp", list, None, lambda m: ".self_attn." in m or ".mlp." in m),
    ("first:2 & mlp", list, [0, 1], lambda m: ".mlp." in m and layer_of(m) in (0, 1)),
    (r"regex:layers\.3\.self_attn\.q_proj", list, [3], lambda m: m == "model.layers.3.self_attn.q_proj"),
    (
        "embed + head + module:q_proj,v_proj",
        list,
        None,
        lambda m: m in ("model.embed_tokens", "lm_head") or m.endswith(("q_proj", "v_proj")),
    ),
    ("mlp + layers:0-1", str, None, lambda m: ".mlp." in m or layer_of(m) in (0, 1)),
    ("head + attn & last:2", str, None, lambda m: m == "lm_head" or (".self_attn." in m and layer_of(m) in (4, 5))),
]


@pytest.mark.parametrize("spec,form,layers,expect", LORA_CASES, ids=[c[0] for c in LORA_CASES])
def test_lora_targets_put_adapters_on_exactly_the_selection(llama, spec, form, layers, expect):
    targets = lora_targets(llama, spec)
    assert isinstance(targets["target_modules"], form)
    assert targets["layers_to_transform"] == layers
    assert _adapted(llama, targets) == _llama_modules(expect)


def test_lora_targets_gpt2_conv1d():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    targets = lora_targets(model, "mlp & layers:1")  # c_proj also names attention's output: needs the regex
    assert isinstance(targets["target_modules"], str)
    assert _adapted(model, targets, fan_in_fan_out=True) == {"transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"}
    targets = lora_targets(model, "attn")
    assert isinstance(targets["target_modules"], str)
    assert _adapted(model, targets, fan_in_fan_out=True) == {
        f"transformer.h.{i}.attn.{m}" for i in (0, 1) for m in ("c_attn", "c_proj")
    }
    assert lora_targets(model, "module:c_fc") == {"target_modules": ["c_fc"], "layers_to_transform": None}


def test_lora_targets_errors(llama):
    with pytest.raises(ValueError, match="picks only parameters LoRA cannot adapt"):
        lora_targets(llama, "norm")


def test_trainable_share_counts_what_trains_against_the_models_own_weights():
    from conftest import make_tiny_llama
    from peft import LoraConfig, get_peft_model

    from layerprobe.train.models import trainable_share
    from layerprobe.train.select import apply_requires_grad

    model = make_tiny_llama(tie=True)
    sel = apply_requires_grad(model, "mlp")
    n, share = trainable_share(model)
    total = sum(p.numel() for p in model.parameters())  # tied embedding/head counted once
    mlp = sum(p.numel() for name, p in model.named_parameters() if ".mlp." in name)
    assert (n, share) == (mlp, pytest.approx(mlp / total)) and share == pytest.approx(sel.share)
    lora = get_peft_model(make_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    n, share = trainable_share(lora)
    adapters = sum(p.numel() for name, p in lora.named_parameters() if "lora_" in name)
    own = sum(p.numel() for name, p in lora.named_parameters() if "lora_" not in name)
    assert (n, share) == (adapters, pytest.approx(adapters / own))
