"""Reference stores (recorder.reference_store): every store records the numbers the disk store records, bit for bit,
and those numbers are the plain computation's; auto chooses by size and device; a resume keeps the phase's start."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama

from layerprobe.core.config import TrainConfig
from layerprobe.core.config_phase import RecordConfig
from layerprobe.record import snapshot
from layerprobe.record.recorder import Recorder
from layerprobe.record.records import load_records
from layerprobe.record.snapshot import MemorySnapshot, choose_store
from layerprobe.record.tracking import find_units
from layerprobe.train.fingerprint import stage_inputs

STORES = ("device", "host", "disk")
CHANGE = ("update_ratio", "drift_ratio")


def _lora(model):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"]
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))


def _effective(model) -> dict[str, torch.Tensor]:
    """Reference: every trainable weight in float64, a LoRA pair as its effective weight base + s * B @ A (plain
    matrix product; transposed for embeddings), a dense one as itself; keyed by the records' param name."""
    units = find_units(model)
    out = {}
    factors = {id(p.a) for p in units.lora} | {id(p.b) for p in units.lora}
    for d in units.dense:
        if id(d.param) not in factors:
            out[d.name] = d.param.detach().double().clone()
    for p in units.lora:
        delta = p.b.detach().double() @ p.a.detach().double()
        out[p.name] = p.base.detach().double() + p.scale * (delta.T if p.transposed else delta)
    return out


def _ratio(new: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(new - ref) / torch.linalg.vector_norm(ref))


def _train(model, out, store, steps=4, resume_at=None, **kw):
    """A plain loop of ``steps`` AdamW steps, recording update ratio and drift each step; returns the records of
    the two quantities and the plain reference values {(step, param): (update, drift)}. ``resume_at``: the process
    is "killed" after that step (no close) and a new recorder resumes there."""
    torch.manual_seed(1)
    x = torch.randint(0, 64, (4, 12))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-2)
    kwargs = dict(
        phase="p",
        grad_every="never",
        weight_every="never",
        update_every=1,
        drift_every=1,
        quantities=CHANGE,
        reference_store=store,
        **kw,
    )
    rec = Recorder(model, out, **kwargs)
    start, expected = _effective(model), {}
    for step in range(1, steps + 1):
        before = _effective(model)
        model(input_ids=x, labels=x).loss.backward()
        rec.before_step()
        opt.step()
        opt.zero_grad()
        rec.after_step()
        after = _effective(model)
        for name in after:
            expected[(step, name)] = (_ratio(after[name], before[name]), _ratio(after[name], start[name]))
        if step == resume_at:
            rec.flush()
            rec = Recorder(model, out, resume_step=step, **kwargs)  # the killed process's recorder is never closed
            rec.step = step + 1
    rec.close()
    df = load_records(out)
    got = {
        (q, int(s), p): v
        for q, s, p, v in zip(df.quantity, df.step, df.param, df.value)
        if q in CHANGE and p and not p.endswith((".lora_A", ".lora_B"))
    }
    return got, expected, rec


@pytest.mark.parametrize("method", ["full", "lora"])
def test_every_store_records_the_disk_stores_numbers_and_the_plain_computation(tmp_path, monkeypatch, method):
    monkeypatch.setattr(snapshot, "CHUNK_BYTES", 256)  # many pieces per tensor: the piece boundaries matter
    results = {}
    for store in STORES:
        model = make_tiny_llama(seed=0)
        if method == "lora":
            model = _lora(model)
        got, expected, rec = _train(model, tmp_path / store, store)
        assert rec.reference_store["store"] == store
        results[store] = got
        assert len(got) == 2 * len(expected) > 0
        for (step, name), (update, drift) in expected.items():
            assert got[("update_ratio", step, name)] == pytest.approx(update, rel=2e-5, abs=1e-9)
            assert got[("drift_ratio", step, name)] == pytest.approx(drift, rel=2e-5, abs=1e-9)
        # every reference file is gone after close
        assert not list((tmp_path / store / "records").glob(".*.bin"))
    assert results["device"] == results["disk"]  # exactly: the same pieces, summed in the same order
    assert results["host"] == results["disk"]


@pytest.mark.parametrize("store", STORES)
def test_a_resumed_phase_measures_drift_from_the_phase_start_in_every_store(tmp_path, store):
    """A memory store writes the drift reference to disk once, at the phase's start; the resumed recorder reads
    it back, so drift after the resume is still from the start (and equals an uninterrupted disk run's)."""
    got, expected, _ = _train(make_tiny_llama(seed=0), tmp_path / "a", store, steps=5, resume_at=2)
    for (step, name), (update, drift) in expected.items():
        assert got[("drift_ratio", step, name)] == pytest.approx(drift, rel=2e-5, abs=1e-9)
        assert got[("update_ratio", step, name)] == pytest.approx(update, rel=2e-5, abs=1e-9)
    plain, _, _ = _train(make_tiny_llama(seed=0), tmp_path / "b", "disk", steps=5)
    assert got == plain


def test_a_resume_without_the_reference_file_starts_a_new_reference(tmp_path):
    model = make_tiny_llama(seed=0)
    rec = Recorder(model, tmp_path, phase="p", reference_store="host")
    path = rec.drift.store.path
    assert path.is_file()  # written once at the start, for a resume
    path.unlink()
    again = Recorder(model, tmp_path, phase="p", resume_step=3, reference_store="host")
    assert again.drift.store.ready and again.drift.store.path.is_file()
    rec.close()
    again.close()


def test_memory_store_roundtrip_and_pieces_equal_the_disk_stores(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "CHUNK_BYTES", 64)
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(7, 9, generator=g), "b16": torch.randn(33, generator=g).bfloat16()}
    disk = snapshot.DiskSnapshot(tmp_path / "d.bin")
    disk.write(tensors)
    for where in ("device", "host"):
        mem = MemorySnapshot(tmp_path / f"{where}.bin", where)
        mem.write(tensors)
        assert not (tmp_path / f"{where}.bin").exists()  # not persisting: memory only
        for name, t in tensors.items():
            assert torch.equal(mem.get(name), t)
            live = t.float() * 3
            a = [(x.clone(), y.clone()) for x, y in disk.pairs(name, live)]
            b = [(x.clone(), y.clone()) for x, y in mem.pairs(name, live)]
            assert len(a) == len(b) > 1
            assert all(torch.equal(x0, x1) and torch.equal(y0, y1) for (x0, y0), (x1, y1) in zip(a, b))
        buffers = {n: mem.get(n).data_ptr() for n in tensors}
        mem.write({n: t + 1 for n, t in tensors.items()})  # same shapes: the buffers are reused
        assert {n: mem.get(n).data_ptr() for n in tensors} == buffers
        with pytest.raises(ValueError, match="changed shape"):
            next(mem.pairs("w", torch.zeros(3)))
        mem.close()
    disk.close()


def test_readers_wait_for_the_asynchronous_copy_once(tmp_path):
    """A copy into pinned memory is queued on the GPU stream; ``get`` and ``pairs`` wait for its event first (the
    GPU path, checked here with a stand-in event since the tests never need a GPU)."""

    class Event:
        waits = 0

        def synchronize(self):
            Event.waits += 1

    mem = MemorySnapshot(tmp_path / "m.bin", "host")
    mem.write({"w": torch.ones(3)})
    mem._copied = Event()
    assert torch.equal(mem.get("w"), torch.ones(3)) and Event.waits == 1
    list(mem.pairs("w", torch.ones(3)))
    assert Event.waits == 1  # waited once, not per read
    mem.close()


GB = 1e9


@pytest.mark.parametrize(
    "store, nbytes, device, lora_only, expected",
    [
        ("auto", 50 * GB, "cuda", True, "device"),  # LoRA factors: always on the device
        ("auto", 2 * GB, "cuda", False, "device"),  # fits the device budget (8 GB)
        ("auto", 10 * GB, "cuda", False, "host"),  # over the device budget, fits the host's (16 GB)
        ("auto", 20 * GB, "cuda", False, "disk"),
        ("auto", 10 * GB, "cpu", False, "host"),  # on CPU device memory is host memory
        ("auto", 10 * GB, "cpu", True, "host"),
        ("auto", 20 * GB, "cpu", False, "disk"),
        ("disk", 1, "cuda", True, "disk"),  # an explicit store is kept
        ("device", 20 * GB, "cpu", False, "device"),
        ("host", 20 * GB, "cuda", False, "host"),
    ],
)
def test_auto_chooses_by_size_and_device(store, nbytes, device, lora_only, expected):
    got, reason = choose_store(store, int(nbytes), device, lora_only, 8 * GB, 16 * GB)
    assert got == expected and reason and "\n" not in reason


def test_the_recorder_records_its_choice_and_reason(tmp_path):
    model = make_tiny_llama()
    nbytes = 2 * sum(p.numel() * 4 for p in model.parameters())  # update + drift copies, fp32
    rec = Recorder(model, tmp_path, phase="p", host_budget_gb=nbytes / GB)
    assert rec.reference_store == {
        "store": "host",
        "asked": "auto",
        "reason": rec.reference_store["reason"],
        "bytes": nbytes,
        "device": "cpu",
    }
    meta = json.loads((tmp_path / "records" / "meta-p.json").read_text())
    assert meta["reference_store"]["store"] == "host"
    rec.close()
    small = Recorder(model, tmp_path / "b", phase="p", host_budget_gb=(nbytes - 1) / GB)
    assert small.reference_store["store"] == "disk" and "exceeds the host budget" in small.reference_store["reason"]
    small.close()
    # drift only: one copy counts
    one = Recorder(model, tmp_path / "c", phase="p", quantities=["drift_ratio"])
    assert one.reference_store["bytes"] == nbytes // 2
    one.close()


def test_bad_store_values_give_one_line_errors(tmp_path):
    with pytest.raises(
        ValueError, match=r"^recorder.reference_store must be one of auto, device, host, disk, got 'gpu'"
    ):
        Recorder(make_tiny_llama(), tmp_path, reference_store="gpu")
    with pytest.raises(ValueError, match="reference_store must be one of") as err:
        RecordConfig(reference_store="ssd")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="device_budget_gb and recorder.host_budget_gb must be >= 0"):
        RecordConfig(host_budget_gb=-1)


def test_the_store_changes_no_fingerprint_and_defaults_leave_the_config_hash_alone():
    """Where the references live changes no number: no stage reruns for it, and configs written before the field
    existed keep their hash."""
    from types import SimpleNamespace

    data = SimpleNamespace(cpt_docs=["a"], sft_rows=[{"x": 1}], eval_set=["e"])
    base = TrainConfig()
    disk = TrainConfig(recorder=RecordConfig(reference_store="disk", host_budget_gb=3.0))
    assert "reference_store" not in base.to_dict()["recorder"]
    assert disk.to_dict()["recorder"]["reference_store"] == "disk"
    assert stage_inputs(base, data, "h") == stage_inputs(disk, data, "h")
    assert stage_inputs(base, data, "h") != stage_inputs(TrainConfig(threads=1), data, "h")  # threads move numbers
