"""Small exact checks of layerprobe.record.recorder (mutation testing, issue 24): a two-matrix model whose weights and
gradients are set by hand, so that every recorded number can be checked on paper or against
``torch.nn.utils.clip_grad_norm_``: clipping and its factor, the rows of each quantity and their aggregates, steps
given by the caller, zero references, the end of a phase, frozen weights that moved, and a resumed phase."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from layerprobe.record import distributed
from layerprobe.record.recorder import Recorder
from layerprobe.record.records import load_records

UP, DOWN = "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight"


class Tiny(nn.Module):
    """``layers.0.mlp.up_proj`` (weight diag(3, 4): norm 5) and ``layers.0.mlp.down_proj`` (weight [[1, 0], [0, 0]]:
    norm 1), both trainable; ``frozen`` (optional) is a frozen 2-vector under ``layers.0.mlp.gate_proj``."""

    def __init__(self, frozen: bool = False, down=((1.0, 0.0), (0.0, 0.0))):
        super().__init__()
        self.layers = nn.ModuleList([nn.Module()])
        mlp = self.layers[0].mlp = nn.Module()
        mlp.up_proj = nn.Linear(2, 2, bias=False)
        mlp.down_proj = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            mlp.up_proj.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
            mlp.down_proj.weight.copy_(torch.tensor(down))
        if frozen:
            mlp.gate_proj = nn.Linear(2, 1, bias=False)
            mlp.gate_proj.weight.requires_grad_(False)

    def up(self) -> torch.Tensor:
        return self.layers[0].mlp.up_proj.weight

    def down(self) -> torch.Tensor:
        return self.layers[0].mlp.down_proj.weight


def _grads(model: Tiny, up, down) -> None:
    model.up().grad = torch.tensor(up, dtype=torch.float32)
    model.down().grad = torch.tensor(down, dtype=torch.float32)


G34 = ([[3.0, 0.0], [0.0, 0.0]], [[0.0, 4.0], [0.0, 0.0]])  # gradient norms 3 and 4: 5 in all


def _rows(path, quantity) -> dict:
    """{(step, layer, block, module, param): value} of one quantity."""
    df = load_records(path, quantities=[quantity])
    return {
        (int(s), int(la), b, m, p): v
        for s, la, b, m, p, v in zip(df.step, df.layer, df.block, df.module, df.param, df.value)
    }


def _levels(step: int, up, down, both) -> dict:
    """The rows of one quantity at one step: per parameter, per module (the same: one parameter each) and for the
    (layer 0, mlp) block of both."""
    return {
        (step, 0, "mlp", "up_proj", UP): up,
        (step, 0, "mlp", "down_proj", DOWN): down,
        (step, 0, "mlp", "up_proj", ""): up,
        (step, 0, "mlp", "down_proj", ""): down,
        (step, 0, "mlp", "", ""): both,
    }


def _quiet(**kw):
    """Only the quantities a test names are recorded: the rest never."""
    return {"grad_every": "never", "update_every": "never", "drift_every": "never", "weight_every": "never", **kw}


def test_grad_norms_per_parameter_per_module_per_block_and_in_the_summary(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, phase="cpt", run="r", **_quiet(grad_every=1))
    _grads(model, *G34)
    assert rec.before_step() == 1.0
    rec.after_step()
    rec.close()
    assert _rows(tmp_path, "grad_norm") == _levels(1, 3.0, 4.0, 5.0)  # 5 = sqrt(3^2 + 4^2)
    assert _rows(tmp_path, "grad_norm_total") == {(1, -1, "", "", ""): 5.0}
    assert "clip_factor" not in set(load_records(tmp_path).quantity)  # no limit: no factor
    assert set(load_records(tmp_path).run) == {"r"}
    assert rec.summary["layerprobe/grad_norm/mlp"] == 5.0
    assert rec.summary["layerprobe/grad_norm_total"] == 5.0
    assert rec.summary["layerprobe/trainable_share"] == 1.0


def test_without_per_param_only_the_aggregates_are_written_and_the_run_is_named_after_the_folder(tmp_path):
    out = tmp_path / "my-run"
    model = Tiny()
    rec = Recorder(model, out, per_param=False, **_quiet(grad_every=1))
    _grads(model, *G34)
    rec.before_step()
    rec.after_step()
    rec.close()
    assert _rows(out, "grad_norm") == {
        (1, 0, "mlp", "up_proj", ""): 3.0,
        (1, 0, "mlp", "down_proj", ""): 4.0,
        (1, 0, "mlp", "", ""): 5.0,
    }
    assert set(load_records(out).run) == {"my-run"}
    assert set(load_records(out).phase) == {"train"}


def _clip_reference(grads, max_norm):
    """torch's own clip_grad_norm_ on copies of the gradients: (the gradients after it, its clip factor)."""
    params = [nn.Parameter(torch.zeros(2, 2)) for _ in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g, dtype=torch.float32)
    total = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return [p.grad for p in params], max_norm / (total + 1e-6)


@pytest.mark.parametrize(
    ("grads", "max_norm"),
    [
        (G34, 1.0),  # 5 > 1: scaled by 1 / 5
        (G34, 4.999),  # just above the limit: still scaled
        (G34, 10.0),  # under the limit: untouched
        (([[math.inf, 0.0], [0.0, 0.0]], [[0.0, 4.0], [0.0, 0.0]]), 1.0),  # an infinite norm: factor 0
        (([[math.nan, 0.0], [0.0, 0.0]], [[0.0, 4.0], [0.0, 0.0]]), 1.0),  # NaN: NaN everywhere, as torch does
    ],
    ids=["over", "just-over", "under", "inf", "nan"],
)
def test_clipping_does_what_clip_grad_norm_does_and_returns_its_factor(tmp_path, grads, max_norm):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=1))
    _grads(model, *grads)
    ref_grads, ref_coef = _clip_reference(grads, max_norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        factor = rec.before_step(max_grad_norm=max_norm)
    for got, want in zip((model.up().grad, model.down().grad), ref_grads):
        torch.testing.assert_close(got, want, equal_nan=True)
    expected = ref_coef if not (ref_coef >= 1.0) else 1.0  # the factor applied (1: none), NaN when the norm is NaN
    assert factor == pytest.approx(expected, nan_ok=True)
    rec.after_step()
    rec.close()
    row = _rows(tmp_path, "clip_factor")[(1, -1, "", "", "")]
    assert row == pytest.approx(min(expected, 1.0), nan_ok=True)


def test_a_limit_of_zero_clips_nothing_and_records_no_factor(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=1))
    _grads(model, *G34)
    assert rec.before_step(max_grad_norm=0.0) == 1.0
    assert float(model.up().grad.norm()) == 3.0 and float(model.down().grad.norm()) == 4.0
    rec.after_step()
    rec.close()
    assert "clip_factor" not in set(load_records(tmp_path).quantity)


def test_an_optimizer_that_clips_itself_gets_its_factor_recorded_but_not_applied(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=1))
    _grads(model, *G34)
    factor = rec.before_step(optimizer_clips=2.0)
    assert factor == pytest.approx(2.0 / (5.0 + 1e-6), rel=1e-12)
    assert float(model.up().grad.norm()) == 3.0 and float(model.down().grad.norm()) == 4.0  # not applied
    _grads(model, [[0.3, 0.0], [0.0, 0.0]], [[0.0, 0.4], [0.0, 0.0]])  # norm 0.5: under the optimizer's limit
    rec.after_step()
    assert rec.before_step(optimizer_clips=2.0) == 1.0
    rec.after_step()
    rec.close()
    rows = _rows(tmp_path, "clip_factor")
    assert rows == {(1, -1, "", "", ""): pytest.approx(2.0 / (5.0 + 1e-6)), (2, -1, "", "", ""): 1.0}


def test_clipping_on_a_step_whose_norms_are_not_due_clips_but_records_nothing(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=2))
    for _ in (1, 2):
        _grads(model, *G34)
        rec.before_step(max_grad_norm=1.0)
        torch.testing.assert_close(model.up().grad.norm(), torch.tensor(3.0 / (5.0 + 1e-6)))
        rec.after_step()
    rec.close()
    assert set(_rows(tmp_path, "grad_norm")) == {
        (2, 0, "mlp", m, p)
        for m, p in (("up_proj", UP), ("down_proj", DOWN), ("up_proj", ""), ("down_proj", ""), ("", ""))
    }
    assert list(_rows(tmp_path, "clip_factor")) == [(2, -1, "", "", "")]
    assert list(_rows(tmp_path, "grad_norm_total")) == [(2, -1, "", "", "")]
    assert set(load_records(tmp_path).quantity) == {
        "n_params",
        "n_trainable",
        "trainable_share",
        "grad_norm",
        "grad_norm_total",
        "clip_factor",
    }


def test_an_infinite_limit_clips_nothing_as_clip_grad_norm_does(tmp_path):
    """max_grad_norm=inf (record the norm, never clip): the factor inf / 5 is not < 1, so nothing is scaled; the
    gradients used to be multiplied by inf (NaN where they were 0)."""
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=1))
    _grads(model, *G34)
    ref_grads, _ = _clip_reference(G34, math.inf)
    assert rec.before_step(max_grad_norm=math.inf) == 1.0
    for got, want in zip((model.up().grad, model.down().grad), ref_grads):
        torch.testing.assert_close(got, want)
    rec.after_step()
    rec.close()
    assert _rows(tmp_path, "clip_factor") == {(1, -1, "", "", ""): 1.0}


def test_a_rank_that_does_not_write_still_clips_and_keeps_no_references(tmp_path, monkeypatch):
    """Under DDP (RANK=1, no process group here) rank 0 alone records; the others clip their own gradients alike
    and hold no copy of the weights for the ratios."""
    monkeypatch.setenv("RANK", "1")
    model = Tiny()
    rec = Recorder(model, tmp_path, reference_store="disk", update_every=1, drift_every=1, weight_every=1)
    assert rec.writer is None and rec.summary == {}
    _grads(model, *G34)
    rec.before_step(max_grad_norm=1.0)
    torch.testing.assert_close(model.up().grad.norm(), torch.tensor(3.0 / (5.0 + 1e-6)))
    _sgd_step(model, [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    assert not list(tmp_path.rglob(".*.bin"))  # no weights kept for an update ratio
    rec.after_step()
    rec.close()
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob(".*.bin"))
    assert rec.summary == {}


def test_an_update_ratio_needs_the_weights_of_just_before_the_same_step(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(update_every=1))
    rec.before_step(step=1)  # the weights before step 1 are kept
    _sgd_step(model, [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    rec.after_step(step=2)  # but the caller says this was step 2: no ratio against step 1's weights
    rec.before_step(step=3)
    _sgd_step(model, [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    rec.after_step(step=3)
    rec.close()
    assert set(_rows(tmp_path, "update_ratio")) == {
        (3, 0, "mlp", m, p)
        for m, p in (("up_proj", UP), ("down_proj", DOWN), ("up_proj", ""), ("down_proj", ""), ("", ""))
    }
    assert _rows(tmp_path, "update_ratio")[(3, 0, "mlp", "up_proj", UP)] == pytest.approx(1.0 / math.sqrt(9 + 25))


def test_a_loss_scale_left_in_the_gradients_is_divided_out(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=1))
    rec.grad_scale = 4.0
    _grads(model, *G34)
    rec.before_step()
    rec.after_step()
    rec.close()
    assert _rows(tmp_path, "grad_norm_total") == {(1, -1, "", "", ""): 5.0 / 4.0}


def test_steps_given_by_the_caller_number_the_rows(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=1, weight_every=1))
    _grads(model, *G34)
    rec.before_step(step=7)
    rec.after_step()  # step 7 still
    assert rec.step == 8
    _grads(model, *G34)
    rec.before_step()
    rec.after_step(step=20)
    rec.close()
    assert sorted({k[0] for k in _rows(tmp_path, "grad_norm_total")}) == [7, 8]
    assert sorted({k[0] for k in _rows(tmp_path, "weight_norm")}) == [7, 20]


def _sgd_step(model: Tiny, up_delta, down_delta) -> None:
    with torch.no_grad():
        model.up().add_(torch.tensor(up_delta))
        model.down().add_(torch.tensor(down_delta))


def test_update_drift_and_weight_norm_rows_by_hand_and_a_zero_reference(tmp_path):
    """up_proj diag(3, 4) (norm 5) moves by [[0, 0], [0, 1.25]] at step 1; down_proj starts at zero, stays there at
    step 1 (0 / 0: recorded as 0) and moves by 1 at [0, 0] at step 2 (x / 0: inf)."""
    model = Tiny(down=((0.0, 0.0), (0.0, 0.0)))
    rec = Recorder(model, tmp_path, **_quiet(update_every=1, drift_every=1, weight_every=1))
    rec.before_step()
    _sgd_step(model, [[0.0, 0.0], [0.0, 1.25]], [[0.0, 0.0], [0.0, 0.0]])
    rec.after_step()
    rec.before_step()
    _sgd_step(model, [[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]])
    rec.after_step()
    rec.close()
    up_after = math.sqrt(9 + 5.25**2)
    upd, drift, wn = (_rows(tmp_path, q) for q in ("update_ratio", "drift_ratio", "weight_norm"))
    both = math.sqrt(1.25**2 + 1) / 5  # drift of the pair at step 2: sqrt(summed squares) / sqrt(summed squares)
    r = pytest.approx(1.25 / 5)
    assert upd == {**_levels(1, r, 0.0, r), **_levels(2, 0.0, math.inf, pytest.approx(1 / up_after))}
    assert drift == {**_levels(1, r, 0.0, r), **_levels(2, r, math.inf, pytest.approx(both))}
    w = pytest.approx(up_after)
    assert wn == {**_levels(1, w, 0.0, w), **_levels(2, w, 1.0, pytest.approx(math.sqrt(up_after**2 + 1)))}
    assert rec.summary["layerprobe/weight_norm/mlp"] == pytest.approx(math.sqrt(up_after**2 + 1))
    assert rec.summary["layerprobe/drift_ratio/mlp"] == pytest.approx(both)
    assert rec.summary["layerprobe/update_ratio/mlp"] == pytest.approx(1 / up_after)


def test_closing_records_the_last_drift_when_the_schedule_missed_it_and_the_frozen_weights(tmp_path):
    model = Tiny(frozen=True)
    rec = Recorder(model, tmp_path, **_quiet(drift_every=3))
    for step in range(1, 5):
        rec.before_step()
        _sgd_step(model, [[0.0, 0.0], [0.0, 0.25 * step]], [[0.0, 0.0], [0.0, 0.0]])
        rec.after_step()
    rec.close()
    rec.close()  # a second close does nothing
    drift = _rows(tmp_path, "drift_ratio")
    assert sorted({k[0] for k in drift}) == [3, 4]  # step 3 by the schedule, step 4 at the end
    assert drift[(4, 0, "mlp", "up_proj", UP)] == pytest.approx((0.25 + 0.5 + 0.75 + 1.0) / 5)
    assert _rows(tmp_path, "frozen_moved") == {(4, 0, "mlp", "gate_proj", "layers.0.mlp.gate_proj.weight"): 0.0}


def test_a_frozen_weight_that_moved_is_flagged_and_a_phase_without_steps_ends_at_step_0(tmp_path):
    model = Tiny(frozen=True)
    rec = Recorder(model, tmp_path, **_quiet(drift_every=3))
    with torch.no_grad():
        model.layers[0].mlp.gate_proj.weight.add_(1.0)
    rec.close()
    assert _rows(tmp_path, "frozen_moved") == {(0, 0, "mlp", "gate_proj", "layers.0.mlp.gate_proj.weight"): 1.0}
    assert "drift_ratio" not in set(load_records(tmp_path).quantity)  # no step: no final drift


def test_one_step_then_the_end_records_the_drift_of_step_1(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(drift_every=3))
    rec.before_step()
    _sgd_step(model, [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    rec.after_step()
    rec.close()
    assert _rows(tmp_path, "drift_ratio")[(1, 0, "mlp", "up_proj", UP)] == pytest.approx(1.0 / 5)


def test_a_frozen_weight_unfrozen_and_trained_during_the_phase_is_flagged(tmp_path):
    model = Tiny(frozen=True)
    rec = Recorder(model, tmp_path, **_quiet())
    gate = model.layers[0].mlp.gate_proj.weight
    gate.requires_grad_(True)  # unfrozen behind the recorder's back, then trained
    with torch.no_grad():
        gate.add_(1.0)
    rec.before_step()
    rec.after_step()
    rec.close()
    assert _rows(tmp_path, "frozen_moved") == {(1, 0, "mlp", "gate_proj", "layers.0.mlp.gate_proj.weight"): 1.0}


def test_the_defaults_are_the_readme_s(tmp_path, monkeypatch):
    """README: gradient norms every step, update ratio, drift and weight norm every 25 steps, Parquet parts at least
    every 30 s; phase "train"; the host budget of ``auto`` a quarter of the memory available."""
    from layerprobe.record import snapshot

    monkeypatch.setattr(snapshot, "available_memory", lambda *a: 8e9)
    model = Tiny()
    rec = Recorder(model, tmp_path)
    assert rec.writer is not None and rec.writer.flush_every_s == 30.0
    assert rec.reference_store["reason"] == "0.0 MiB fits the host budget of 2.0 GB (model on cpu)"
    for _ in range(26):
        _grads(model, *G34)
        rec.before_step()
        rec.after_step()
    rec.close()
    df = load_records(tmp_path)
    assert set(df.phase) == {"train"}
    assert sorted(set(df[df.quantity == "grad_norm_total"].step)) == list(range(1, 27))
    for quantity in ("update_ratio", "weight_norm"):
        assert sorted(set(df[df.quantity == quantity].step)) == [25], quantity
    assert sorted(set(df[df.quantity == "drift_ratio"].step)) == [25, 26]  # and at the end


def test_the_meta_file_and_the_reference_files_of_a_phase(tmp_path):
    import json

    model = Tiny()
    rec = Recorder(
        model, tmp_path, run="r", phase="cpt", reference_store="disk", meta={"grad_norm_clip": "post", "note": 1}
    )
    meta = json.loads((tmp_path / "records" / "meta-cpt.json").read_text())
    assert (meta["run"], meta["model"], meta["sharded_over"]) == ("r", "Tiny", None)
    assert meta["reference_store"] == rec.reference_store and rec.reference_store["store"] == "disk"
    assert (meta["grad_norm_clip"], meta["meta"]) == ("post", {"note": 1})
    assert meta["quantities"] == ["grad_norm", "weight_norm", "update_ratio", "drift_ratio"]
    # the drift reference is written at the start, on disk, named after the phase and the rank
    assert sorted(p.name for p in (tmp_path / "records").glob(".*.bin")) == [".reference-cpt-r0.bin"]
    rec.close()
    quiet = Recorder(Tiny(), tmp_path / "never", phase="cpt", reference_store="disk", drift_every="never")
    assert not list((tmp_path / "never").rglob(".*.bin"))  # no drift: no reference
    quiet.close()


def test_a_new_phase_in_a_folder_of_a_killed_attempt_starts_a_new_drift_reference(tmp_path):
    model = Tiny()
    Recorder(model, tmp_path, reference_store="disk", **_quiet(drift_every=1))  # killed: never closed
    _sgd_step(model, [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])  # the new attempt starts elsewhere
    rec = Recorder(model, tmp_path, reference_store="disk", **_quiet(drift_every=1))  # not a resume
    rec.before_step()
    _sgd_step(model, [[0.0, 0.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]])
    rec.after_step()
    rec.close()
    assert _rows(tmp_path, "drift_ratio")[(1, 0, "mlp", "up_proj", UP)] == pytest.approx(0.5 / math.sqrt(9 + 25))


def test_the_reference_store_holds_one_copy_per_ratio_recorded(tmp_path):
    nbytes = 2 * 4 * 4  # two 2x2 float32 matrices
    for kw, copies in (
        ({}, 2),
        ({"drift_every": "never"}, 1),
        ({"update_every": "never", "drift_every": "never"}, 0),
        ({"quantities": ["grad_norm", "drift_ratio"]}, 1),
    ):
        rec = Recorder(Tiny(), tmp_path / str(len(kw)) / str(copies), **kw)
        assert rec.reference_store["bytes"] == copies * nbytes, kw
        rec.close()


def test_a_non_finite_norm_warns_once_naming_the_step(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            _grads(model, [[math.inf, 0.0], [0.0, 0.0]], G34[1])
            rec.before_step()
            rec.after_step()
    rec.close()
    assert [str(w.message) for w in caught] == [
        "layerprobe: non-finite gradient norm (inf) at step 1; recorded as such "
        "(further occurrences are recorded without a warning)"
    ]
    assert caught[0].category is RuntimeWarning


def test_deepspeed_parameters_refuse_a_max_grad_norm(tmp_path, monkeypatch):
    model = Tiny()
    rec = Recorder(model, tmp_path, **_quiet(grad_every=1))
    _grads(model, *G34)
    for zero in ("is_zero3", "is_zero12"):
        with monkeypatch.context() as m:
            m.setattr(distributed, zero, lambda p: isinstance(p, nn.Parameter))  # each trainable weight is ZeRO's
            with pytest.raises(ValueError) as e:
                rec.before_step(max_grad_norm=1.0)
            assert str(e.value) == (
                "expected max_grad_norm=None under DeepSpeed, got 1.0: DeepSpeed clips inside its step; "
                "set gradient_clipping in its config and pass optimizer_clips"
            )
    assert float(model.up().grad.norm()) == 3.0  # refused before anything was read or clipped
    rec.close()


def test_flush_writes_the_rows_so_far(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, flush_every_s=3600, **_quiet(grad_every=1, weight_every=1))
    _grads(model, *G34)
    rec.before_step()
    rec.after_step()
    assert not list((tmp_path / "records").glob("*.parquet"))  # buffered: an hour between writes
    rec.flush()
    assert _rows(tmp_path, "grad_norm_total") == {(1, -1, "", "", ""): 5.0}
    assert _rows(tmp_path, "weight_norm")[(1, 0, "mlp", "", "")] == pytest.approx(math.sqrt(26))  # step 1's, too
    rec.close()
    rec.flush()  # closed: nothing to write, no error


def test_a_resumed_phase_drops_the_rows_after_its_checkpoint_and_keeps_the_drift_reference(tmp_path):
    model = Tiny()
    rec = Recorder(model, tmp_path, phase="cpt", flush_every_s=3600, **_quiet(grad_every=1, drift_every=1))
    for _ in range(1, 4):
        _grads(model, *G34)
        rec.before_step()
        _sgd_step(model, [[0.0, 0.0], [0.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]])
        rec.after_step()
    rec.flush()  # then killed at step 3: no close; the checkpoint was at step 2
    with torch.no_grad():
        model.up().sub_(torch.tensor([[0.0, 0.0], [0.0, 0.5]]))  # the weights of the checkpoint at step 2
    again = Recorder(
        model, tmp_path, phase="cpt", flush_every_s=1234.0, resume_step=2, **_quiet(grad_every=1, drift_every=1)
    )
    assert again.writer is not None and again.writer.flush_every_s == 1234.0
    assert "layerprobe/trainable_share" not in again.summary  # the audit is not written again
    _grads(model, [[0.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]])
    again.before_step(step=3)
    _sgd_step(model, [[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    again.after_step()
    again.close()
    df = load_records(tmp_path)
    totals = df[df.quantity == "grad_norm_total"]
    assert sorted(zip(totals.step, totals.value)) == [(1, 5.0), (2, 5.0), (3, 2.0)]  # the killed step 3 dropped
    assert set(df.run) == {tmp_path.name} and set(df.phase) == {"cpt"}
    drift = _rows(tmp_path, "drift_ratio")
    assert drift[(3, 0, "mlp", "up_proj", UP)] == pytest.approx(2.0 / 5)  # against the first attempt's start
    assert len(_rows(tmp_path, "n_params")) == 2  # the audit of step 0 once
