"""Per-step overhead of the recorder against plain training, with wandb.watch as the reference users know.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_recorder.py [--steps 6] [--rounds 3]

A 12-layer, hidden-512 Llama-shaped model (vocab 8192), batch 8 x 256 tokens, AdamW, clipping at 1.0.
Variants run alternately (round-robin, one step each per turn) so machine noise hits all of them alike;
medians of per-step wall time are reported with the ratio to plain training measured in the same run.
The recorder's own time inside the step is timed separately too (less noisy than the difference of steps).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from layerprobe.record.recorder import Recorder


def rss_anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(cfg)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


class Variant:
    def __init__(self, name, tmp, **rec_kwargs):
        self.name, self.times, self.rec_times = name, [], []
        self.model, self.opt = build()
        self.rec = None
        if rec_kwargs.pop("wandb", False):
            import wandb

            os.environ["WANDB_MODE"] = "offline"
            os.environ["WANDB_DIR"] = tmp
            self.run = wandb.init(project="layerprobe-bench", dir=tmp, mode="offline")
            self.run.watch(self.model, log="all", log_freq=1)
        elif rec_kwargs:
            self.rec = Recorder(self.model, Path(tmp) / name, phase="bench", **rec_kwargs)

    def step(self, batch):
        t0 = time.perf_counter()
        loss = self.model(input_ids=batch, labels=batch).loss
        loss.backward()
        tr = time.perf_counter()
        if self.rec is not None:
            self.rec.before_step(max_grad_norm=1.0)
        else:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        rec_t = time.perf_counter() - tr
        self.opt.step()
        tr = time.perf_counter()
        if self.rec is not None:
            self.rec.after_step()
        rec_t += time.perf_counter() - tr
        self.opt.zero_grad(set_to_none=True)
        if hasattr(self, "run"):
            self.run.log({"loss": float(loss)})
        self.times.append(time.perf_counter() - t0)
        self.rec_times.append(rec_t)


SPECS = {
    "plain": {},
    "grad": dict(grad_every=1, update_every="never", drift_every="never", weight_every="never"),
    "default": dict(),  # grad_norm every step, update/drift/weight every 25 steps
    "every": dict(grad_every=1, update_every=1, drift_every=1, weight_every=1),
    "drift": dict(grad_every="never", update_every="never", drift_every=1, weight_every="never"),
    "update": dict(grad_every="never", update_every=1, drift_every="never", weight_every="never"),
    "wandb": dict(wandb=True),
}


class PeakAnon:
    """Samples RssAnon every 2 ms in a thread; .peak is the largest value seen."""

    def __enter__(self):
        self.peak, self._stop = rss_anon_mb(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_anon_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def memory_of(name: str) -> None:
    batch = torch.randint(0, 8192, (8, 256), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        plain = Variant("plain", tmp)
        model_mb = sum(p.numel() * p.element_size() for p in plain.model.parameters()) / 2**20
        with PeakAnon() as before:
            for _ in range(2):
                plain.step(batch)
        with PeakAnon() as after:  # attaching (the drift reference is written then), 2 steps and close
            if name != "plain":  # attach the variant to the same, warmed-up model
                spec = dict(SPECS[name])
                if spec.pop("wandb", False):
                    import wandb

                    run = wandb.init(project="layerprobe-bench", dir=tmp, mode="offline")
                    run.watch(plain.model, log="all", log_freq=1)
                    plain.run = run
                else:
                    plain.rec = Recorder(plain.model, Path(tmp) / name, phase="bench", **spec)
            for _ in range(2):
                plain.step(batch)
            if plain.rec is not None:
                plain.rec.close()
        print(
            f"{name:<8} +{after.peak - before.peak:6.0f} MB  ({100 * (after.peak - before.peak) / model_mb:5.1f} % "
            f"of the {model_mb:.0f} MB model)"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="measured steps per variant (after 1 warm-up step)")
    ap.add_argument("--variants", default="plain,grad,every,wandb", help="variants to time ('' for none)")
    ap.add_argument(
        "--memory",
        default="",
        help="comma-separated variants whose extra memory to measure, one process "
        "each (e.g. plain,grad,drift,update,every,wandb)",
    )
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_of:
        return memory_of(args.memory_of)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS')}"
    )
    batch = torch.randint(0, 8192, (8, 256), generator=torch.Generator().manual_seed(0))
    names = [n for n in args.variants.split(",") if n]
    if names and args.steps:
        with tempfile.TemporaryDirectory() as tmp:
            variants = []
            for n in names:
                v = Variant(n, tmp, **SPECS[n])
                v.model_mb = sum(p.numel() * p.element_size() for p in v.model.parameters()) / 2**20
                v.step(batch)  # warm-up (allocates optimizer state and recorder buffers)
                v.times.clear(), v.rec_times.clear()
                variants.append(v)
            for _ in range(args.steps):
                for v in variants:
                    v.step(batch)
            plain = statistics.median(variants[0].times) if names[0] == "plain" else None
            print(f"model: {variants[0].model_mb:.0f} MB of fp32 weights; {args.steps} steps per variant, alternating")
            print(
                f"{'variant':<9} {'median step s':>13} {'vs plain':>9} {'recorder s/step':>16} {'recorder/plain':>15}"
            )
            for v in variants:
                med = statistics.median(v.times)
                rec = statistics.median(v.rec_times) if v.rec else float("nan")
                ratio = f"{100 * (med / plain - 1):+.1f} %" if plain else ""
                own = f"{100 * rec / plain:.2f} %" if plain and v.rec else ""
                print(f"{v.name:<9} {med:13.3f} {ratio:>9} {rec:16.4f} {own:>15}")
            by = {v.name: v for v in variants}
            if "every" in by and "grad" in by and plain:
                upd_drift = statistics.median(by["every"].rec_times) - statistics.median(by["grad"].rec_times)
                g = statistics.median(by["grad"].rec_times)
                print(
                    f"amortised at the default schedule (grad every step, update+drift+weight every 25 steps): "
                    f"{100 * (g + upd_drift / 25) / plain:.2f} % of a plain step "
                    f"(update+drift+weight pass alone: {100 * upd_drift / plain:.1f} % of a step when it runs)"
                )
    if args.memory:
        print(
            "extra anonymous memory (peak RssAnon while attaching the variant, 2 steps and close, minus peak over 2 "
            "plain steps before it, same process; fresh process per variant):"
        )
        for n in args.memory.split(","):
            # a fixed mmap threshold makes glibc return freed large blocks, so RssAnon tracks live tensors
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            out = subprocess.run([sys.executable, __file__, "--memory-of", n], capture_output=True, text=True, env=env)
            print("  " + (out.stdout.strip() or out.stderr.strip()[-300:]))


if __name__ == "__main__":
    main()
