"""The recorder's seconds per recorded step (update ratio + drift) for each reference store, by model size.

    OMP_NUM_THREADS=1 python benchmarks/bench_reference_store.py --out benchmarks/results/reference_store_cpu.json
    benchmarks/reference_store_gpu.sh      # the same on a GPU, 135m / 400m / 1b, in under 5 minutes

Randomly initialised Llama models (transformers' LlamaConfig; no download), full fine-tuning (every weight
trainable, fp32). A recorded step is what the recorder adds to an optimizer step when update ratio and drift are
both due: ``before_step`` (the update reference: a copy of the weights) and ``after_step`` (||W' - W|| and
||W' - W0|| against the two references); the optimizer step between them is replaced by a cheap in-place change
of every weight, outside the timing. Stores alternate (the order rotates each round; each turn builds a fresh
recorder, takes one untimed step, then ``--steps`` timed ones), so machine noise hits all of them alike; the
result holds every timed step, the median per store and size, and the ratio to ``disk`` from the same run.
``start_s`` is the recorder's start (the drift reference written once; with a memory store also to disk, for a
resume), paid once per phase. ``--fit``: a least-squares line seconds = a + b * bytes per store over the sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from layerprobe.record.recorder import Recorder

# ~35 M, SmolLM2-135M's shape, ~400 M (hidden, intermediate, layers, heads, kv heads, vocab)
SIZES = {
    "35m": (384, 1024, 12, 6, 6, 32000),
    "135m": (576, 1536, 30, 9, 3, 49152),
    "400m": (1024, 2816, 28, 16, 8, 49152),
    "1b": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B's shape (for a GPU)
}
STORES = ("device", "host", "disk")


def build(size: str, device: str) -> torch.nn.Module:
    hidden, inter, layers, heads, kv, vocab = SIZES[size]
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )
    with torch.device(device):  # built where it trains (a 1 B model initialised on a CPU first takes minutes)
        return LlamaForCausalLM(cfg)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def turn(model, store: str, steps: int, tmp: Path, device: str) -> tuple[float, list[float], list]:
    """One recorder with ``store``: (start seconds, seconds per timed recorded step, the last step's rows)."""
    sync(device)
    t = time.perf_counter()
    rec = Recorder(
        model,
        tmp,
        phase=f"b-{store}",
        grad_every="never",
        update_every=1,
        drift_every=1,
        weight_every="never",
        quantities=("update_ratio", "drift_ratio"),
        per_param=False,
        flush_every_s=1e9,
        reference_store=store,
    )
    sync(device)
    start = time.perf_counter() - t
    assert rec.reference_store["store"] == store, rec.reference_store
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for i in range(steps + 1):
        sync(device)
        t = time.perf_counter()
        rec.before_step()
        sync(device)
        took = time.perf_counter() - t
        with torch.no_grad():
            torch._foreach_mul_(params, 1.0 + 1e-4)  # the "optimizer step": every weight moves
        sync(device)
        t = time.perf_counter()
        rec.after_step()
        sync(device)
        took += time.perf_counter() - t
        if i:  # the first step of a turn is left out (allocations, first touches)
            times.append(took)
    rows = {k: v for k, v in rec.summary.items() if "update_ratio/" in k or "drift_ratio/" in k}
    rec.close()
    return start, times, sorted(rows.items())


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares seconds = a + b * bytes."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="35m,135m,400m")
    ap.add_argument("--stores", default=",".join(STORES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed recorded steps per turn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", default="", help="what else ran on the machine")
    args = ap.parse_args()
    stores = args.stores.split(",")
    result: dict = {
        "command": " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "loadavg": os.getloadavg(),
        },
        "note": args.note,
        "sizes": {},
    }
    for size in args.sizes.split(","):
        model = build(size, args.device)
        n = sum(p.numel() for p in model.parameters())
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        per: dict = {s: {"times": [], "start": []} for s in stores}
        rows: dict = {}
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            for r in range(args.rounds):
                order = stores[r % len(stores) :] + stores[: r % len(stores)]
                for store in order:
                    start, times, last = turn(model, store, args.steps, Path(tmp) / store, args.device)
                    per[store]["times"] += times
                    per[store]["start"].append(start)
                    rows[store] = last
                    print(f"{size} round {r} {store:6s} start {start:.3f}s steps {' '.join(f'{t:.3f}' for t in times)}")
        for s in stores:
            per[s]["median_s"] = statistics.median(per[s]["times"])
            per[s]["start_median_s"] = statistics.median(per[s]["start"])
        if "disk" in per:
            for s in stores:
                per[s]["ratio_to_disk"] = per[s]["median_s"] / per["disk"]["median_s"]
        result["sizes"][size] = {"params": n, "bytes_per_copy": nbytes, "stores": per}
        print(f"{size}: {n / 1e6:.1f} M params, " + ", ".join(f"{s} {per[s]['median_s']:.3f}s" for s in stores))
        # the summaries of the last turn of each store: the same numbers whichever store held the references
        # (each turn starts from different weights, so only within a turn; checked by the tests, shown here)
        result["sizes"][size]["last_rows"] = {s: rows[s][:4] for s in stores}
        del model
        result["fit"] = {}  # written after every size: a run cut off by a time limit keeps what it measured
        for s in stores:
            pts = [(v["bytes_per_copy"], v["stores"][s]["median_s"]) for v in result["sizes"].values()]
            a, b = fit(pts)
            result["fit"][s] = {"a_s": a, "b_s_per_byte": b, "s_per_gb": b * 1e9}
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["fit"], indent=1))


if __name__ == "__main__":
    main()
