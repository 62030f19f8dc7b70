"""The recorder against plain reference computations: full fine-tuning, LoRA, embeddings, accumulation, clipping."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama
from transformers import Trainer, TrainerCallback, TrainingArguments

from layerprobe.core.names import parse_name
from layerprobe.record.recorder import Recorder
from layerprobe.record.recorder_callback import RecorderCallback
from layerprobe.record.records import COLUMNS, load_records

SEQ = 16


def _data(n=8, vocab=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, SEQ), generator=g)
    return [{"input_ids": r, "labels": r.clone(), "attention_mask": torch.ones(SEQ, dtype=torch.long)} for r in ids]


def _per_param(df, quantity):
    d = df[(df.quantity == quantity) & (df.param != "")]
    return {(int(s), p): v for s, p, v in zip(d.step, d.param, d.value)}


def _agg(df, quantity):
    d = df[(df.quantity == quantity) & (df.param == "") & (df.block != "")]
    return {(int(s), int(l), b, m): v for s, l, b, m, v in zip(d.step, d.layer, d.block, d.module, d.value)}


class Snapshots(TrainerCallback):
    """Reference: the weights after every optimizer step, and each step's accumulated pre-clip gradient."""

    def __init__(self, model):
        self.weights = [{n: p.detach().clone() for n, p in model.named_parameters()}]
        self.grads, self._last = [], {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(lambda p, n=n: self._last.__setitem__(n, p.grad.clone()))

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.grads.append(dict(self._last))

    def on_step_end(self, args, state, control, model=None, **kw):
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters()})


def _train(model, tmp_path, callbacks, max_grad_norm=0.05, ga=2, steps=3):
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=ga,
        max_steps=steps,
        learning_rate=5e-3,
        max_grad_norm=max_grad_norm,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        seed=0,
        lr_scheduler_type="constant",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_data(), callbacks=callbacks)
    trainer.train()
    return trainer


def _canon(name):
    return parse_name(name).canonical


def test_full_finetuning_with_accumulation_and_clipping_matches_reference(tmp_path):
    model = make_tiny_llama()
    twin = copy.deepcopy(model)
    snaps = Snapshots(model)
    rec_dir = tmp_path / "run"
    _train(
        model, tmp_path, [snaps, RecorderCallback(rec_dir, phase="cpt", update_every=1, drift_every=1, weight_every=1)]
    )
    _train(twin, tmp_path, [])  # the same training without the recorder
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=f"recording changed training of {n}")

    df = load_records(rec_dir)
    assert list(df.columns) == list(COLUMNS)
    grad, upd, drift, wn = (_per_param(df, q) for q in ("grad_norm", "update_ratio", "drift_ratio", "weight_norm"))
    clipped = 0
    for step in (1, 2, 3):
        g = snaps.grads[step - 1]
        total = math.sqrt(sum(float(v.double().norm() ** 2) for v in g.values()))
        w0, wprev, wnow = snaps.weights[0], snaps.weights[step - 1], snaps.weights[step]
        for n in g:
            c = _canon(n)
            assert grad[(step, c)] == pytest.approx(float(g[n].norm()), rel=1e-5)
            ref_upd = float((wnow[n] - wprev[n]).double().norm() / wprev[n].double().norm())
            assert upd[(step, c)] == pytest.approx(ref_upd, rel=1e-4, abs=1e-9)
            ref_drift = float((wnow[n] - w0[n]).double().norm() / w0[n].double().norm())
            assert drift[(step, c)] == pytest.approx(ref_drift, rel=1e-4, abs=1e-9)
            assert wn[(step, c)] == pytest.approx(float(wnow[n].double().norm()), rel=1e-5)
        row = df[(df.quantity == "clip_factor") & (df.step == step)].value.item()
        assert row == pytest.approx(min(1.0, 0.05 / (total + 1e-6)), rel=1e-5)
        assert df[(df.quantity == "grad_norm_total") & (df.step == step)].value.item() == pytest.approx(total, rel=1e-5)
        clipped += row < 1
    assert clipped == 3, "the test must exercise clipping"

    # aggregated rows are ratios of summed squares over the (layer, block, module) group, not means of ratios
    agg = _agg(df, "update_ratio")
    groups = {}
    for n in snaps.grads[0]:
        pn = parse_name(n)
        groups.setdefault((pn.layer, pn.block, pn.module), []).append(n)
    for key, names in groups.items():
        num = sum(float((snaps.weights[2][n] - snaps.weights[1][n]).double().norm() ** 2) for n in names)
        den = sum(float(snaps.weights[1][n].double().norm() ** 2) for n in names)
        assert agg[(2, *key)] == pytest.approx(math.sqrt(num / den), rel=1e-4)
    # and per (layer, block), under module ""
    for layer, block in {(k[0], k[1]) for k in groups}:
        names = [n for k, ns in groups.items() if k[:2] == (layer, block) for n in ns]
        num = sum(float((snaps.weights[2][n] - snaps.weights[1][n]).double().norm() ** 2) for n in names)
        den = sum(float(snaps.weights[1][n].double().norm() ** 2) for n in names)
        assert agg[(2, layer, block, "")] == pytest.approx(math.sqrt(num / den), rel=1e-4)
    # the reference file used for drift is removed at the end, and frozen parameters are audited
    assert not list((rec_dir / "records").glob(".reference-*"))
    assert (rec_dir / "records" / "meta-cpt.json").exists()


def _lora_model(targets, rslora=False):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = make_tiny_llama()
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=targets, lora_dropout=0.0, use_rslora=rslora)
    model = get_peft_model(base, cfg)
    # peft starts B at zero; give it a value so that the first step's effective update is not trivial
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "lora_embedding_B" in n:
                p.normal_(0, 0.05)
    return model


def _effective(model):
    """Reference: the materialised effective weight W0 + s * B @ A of every adapted module."""
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            dw = mod.scaling["default"] * (mod.lora_B["default"].weight @ mod.lora_A["default"].weight)
            out[parse_name(name + ".weight").canonical] = (mod.get_base_layer().weight + dw).detach().double()
        elif hasattr(mod, "lora_embedding_A") and "default" in mod.lora_embedding_A:
            dw = mod.scaling["default"] * (mod.lora_embedding_B["default"] @ mod.lora_embedding_A["default"]).T
            out[parse_name(name + ".weight").canonical] = (mod.get_base_layer().weight + dw).detach().double()
    return out


class EffectiveSnapshots(TrainerCallback):
    def __init__(self, model):
        self.model, self.eff = model, [_effective(model)]

    def on_step_end(self, args, state, control, **kw):
        self.eff.append(_effective(self.model))


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_effective_update_and_drift_match_materialised_product(tmp_path, rslora):
    model = _lora_model(["q_proj", "v_proj", "down_proj", "embed_tokens", "lm_head"], rslora)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == (8.0 if rslora else 4.0)
    snaps = EffectiveSnapshots(model)
    run = tmp_path / "run"
    _train(
        model,
        tmp_path,
        [snaps, RecorderCallback(run, phase="sft", update_every=1, drift_every=1, weight_every=1)],
        max_grad_norm=1.0,
    )
    df = load_records(run)
    upd, drift, wn = (_per_param(df, q) for q in ("update_ratio", "drift_ratio", "weight_norm"))
    assert "model.embed_tokens.weight" in snaps.eff[0] and "lm_head.weight" in snaps.eff[0]
    for step in (1, 2, 3):
        e0, eprev, enow = snaps.eff[0], snaps.eff[step - 1], snaps.eff[step]
        for name in e0:
            assert upd[(step, name)] == pytest.approx(
                float((enow[name] - eprev[name]).norm() / eprev[name].norm()), rel=1e-4, abs=1e-10
            )
            assert drift[(step, name)] == pytest.approx(
                float((enow[name] - e0[name]).norm() / e0[name].norm()), rel=1e-4, abs=1e-10
            )
            assert wn[(step, name)] == pytest.approx(float(enow[name].norm()), rel=1e-5)
    # aggregates are in effective-weight units: the factors' own rows do not enter them
    agg = _agg(df, "drift_ratio")
    for step in (1, 2, 3):
        e0, enow = snaps.eff[0], snaps.eff[step]
        for key in {(parse_name(n).layer, parse_name(n).block) for n in e0}:
            names = [n for n in e0 if (parse_name(n).layer, parse_name(n).block) == key]
            num = sum(float((enow[n] - e0[n]).norm() ** 2) for n in names)
            den = sum(float(e0[n].norm() ** 2) for n in names)
            assert agg[(step, *key, "")] == pytest.approx(math.sqrt(num / den), rel=1e-4)
    # the adapter's own factors get gradient norms; the frozen base weights are proven unchanged
    grads = _per_param(df, "grad_norm")
    assert (1, "model.layers.0.self_attn.q_proj.lora_A") in grads
    assert (1, "model.embed_tokens.lora_B") in grads
    moved = df[df.quantity == "frozen_moved"]
    assert len(moved) > 0 and moved.value.sum() == 0
    share = df[df.quantity == "trainable_share"].value.item()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert share == pytest.approx(n_train / sum(p.numel() for p in model.parameters()))


def test_plain_loop_recorder_and_log_spaced_schedule(tmp_path):
    model = make_tiny_llama()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(
        model,
        tmp_path,
        phase="cpt",
        grad_every=2,
        update_every="log:4",
        drift_every="never",
        weight_every="never",
        max_steps=10,
    )
    batch = torch.stack([d["input_ids"] for d in _data(4)])
    ref = []
    for _ in range(10):
        model(input_ids=batch, labels=batch).loss.backward()
        ref.append(math.sqrt(sum(float(p.grad.double().norm() ** 2) for p in model.parameters())))
        rec.before_step()
        opt.step()
        rec.after_step()
        opt.zero_grad()
    rec.close()
    df = load_records(tmp_path)
    tot = df[df.quantity == "grad_norm_total"].set_index("step").value
    assert list(tot.index) == [2, 4, 6, 8, 10]
    np.testing.assert_allclose(tot.to_numpy(), [ref[s - 1] for s in tot.index], rtol=1e-5)
    steps = sorted(df[df.quantity == "update_ratio"].step.unique())
    assert steps == [1, 2, 5, 10]  # round(10 ** (k / 3)) for k = 0..3: four log-spaced steps from 1 to max_steps
    assert "drift_ratio" not in set(df.quantity)


@pytest.mark.parametrize(
    ("spec", "max_steps", "steps"),
    [
        ("log:4", 100, [1, 5, 22, 100]),  # round(100 ** (k / 3))
        ("log:3", 10, [1, 3, 10]),
        ("log:50", 10, list(range(1, 11))),  # more points than steps: each step once
        ("every:3", 10, [3, 6, 9]),
        (4, 10, [4, 8]),
        ("never", 10, []),
    ],
)
def test_schedules_fire_at_exactly_these_steps(spec, max_steps, steps):
    from layerprobe.record.schedules import parse_schedule

    schedule = parse_schedule(spec, max_steps)
    assert [s for s in range(max_steps + 1) if schedule(s)] == steps


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("log:4", "log schedules need the number of training steps"),
        ("every:0", "interval of at least 1 step"),
        ("sometimes", "unknown schedule 'sometimes'"),
        (True, "expected a schedule such as"),
    ],
)
def test_bad_schedules_say_what_is_wrong(spec, message):
    from layerprobe.record.schedules import parse_schedule

    with pytest.raises(ValueError, match=message):
        parse_schedule(spec)


def test_summaries_reach_reporting_callbacks(tmp_path):
    class Spy(TrainerCallback):
        seen: list = []  # noqa: RUF012  (shared on purpose: the test reads it from the class)

        def on_log(self, args, state, control, logs=None, **kw):
            self.seen.append(dict(logs))

    spy = Spy()
    _train(make_tiny_llama(), tmp_path, [spy, RecorderCallback(tmp_path / "run", phase="cpt")], steps=2)
    train_logs = [x for x in spy.seen if "loss" in x]
    assert train_logs and "layerprobe/grad_norm/attn" in train_logs[-1] and "layerprobe/grad_norm/mlp" in train_logs[-1]


def test_nonfinite_gradients_recorded_and_warned_once(tmp_path):
    model = make_tiny_llama()
    rec = Recorder(model, tmp_path, phase="cpt")
    batch = torch.stack([d["input_ids"] for d in _data(2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            model(input_ids=batch, labels=batch).loss.backward()
            next(model.parameters()).grad[0, 0] = float("nan")
            rec.before_step()
            rec.after_step()
            model.zero_grad()
    rec.close()
    assert sum("non-finite" in str(w.message) for w in caught) == 1
    tot = load_records(tmp_path, quantities=["grad_norm_total"]).value
    assert len(tot) == 2 and tot.isna().all()


def test_bad_input_gives_one_line_errors(tmp_path):
    model = make_tiny_llama()
    with pytest.raises(ValueError, match="at least 1 step"):
        Recorder(model, tmp_path, grad_every=0)
    with pytest.raises(ValueError, match="unknown quantity 'grad_nrom'"):
        Recorder(model, tmp_path, quantities=["grad_nrom"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write records"):
        Recorder(model, blocker / "sub")
    with pytest.raises(TypeError, match="unknown keyword"):
        RecorderCallback(tmp_path, grad_evry=1)


def test_bf16_autocast_keeps_fp32_weights_and_records_what_fp32_training_records(tmp_path):
    """bf16 autocast (precision auto/bf16): weights, gradients and the recorder stay fp32; every recorded gradient
    norm is that of the fp32 gradient the step used, and the records agree with an fp32 run to bf16 tolerance."""
    runs = {}
    for bf16 in (False, True):
        model = make_tiny_llama()
        snap = Snapshots(model)
        out = tmp_path / ("bf16" if bf16 else "fp32")
        rec = RecorderCallback(out, grad_every=1, update_every=1, drift_every=1)
        args = TrainingArguments(
            output_dir=str(out / "hf"),
            per_device_train_batch_size=2,
            max_steps=3,
            learning_rate=5e-3,
            max_grad_norm=0.0,
            report_to=[],
            use_cpu=True,
            bf16=bf16,
            save_strategy="no",
            seed=0,
            lr_scheduler_type="constant",
            disable_tqdm=True,
        )
        Trainer(model=model, args=args, train_dataset=_data(), callbacks=[snap, rec]).train()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        df = load_records(out)
        grads = _per_param(df, "grad_norm")
        for step, g in enumerate(snap.grads, 1):
            for name, grad in g.items():
                assert grad.dtype == torch.float32
                assert grads[(step, _canon(name))] == pytest.approx(float(grad.norm()), rel=1e-5)
        runs[bf16] = df
    a, b = (runs[k].set_index(["step", "param", "quantity", "layer", "block", "module"]).value for k in (False, True))
    assert a.index.equals(b.index)  # the same rows
    first = a.index.get_level_values("step") == 1
    close = np.isclose(a[first], b[first], rtol=5e-2, atol=1e-6)
    assert close.mean() > 0.95, f"{(~close).sum()} of {close.size} step-1 records differ by more than 5 %"


def test_callback_seconds_count_starting_and_closing_the_recorder(tmp_path, monkeypatch):
    """The cost a run reports (``record_seconds``) includes the recorder's start and close, not only the steps."""
    import time

    slow = {"__init__": Recorder.__init__, "close": Recorder.close}

    def slowed(name):
        def method(self, *a, **kw):
            time.sleep(0.3)
            return slow[name](self, *a, **kw)

        return method

    for name in slow:
        monkeypatch.setattr(Recorder, name, slowed(name))
    rec = RecorderCallback(
        tmp_path / "run", grad_every="never", update_every="never", drift_every="never", weight_every="never"
    )
    t = time.perf_counter()
    _train(make_tiny_llama(), tmp_path, [rec], steps=1)
    assert 0.6 <= rec.seconds < time.perf_counter() - t
