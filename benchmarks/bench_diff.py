"""Benchmark `layerprobe diff` on a generated Llama-shaped bf16 pair (>= 1 GB per file).

Compares, warm page cache, medians of ``--repeats`` alternating rounds:
- the read floor: ``cat A B > /dev/null``;
- the streaming diff: ``diff_checkpoints(A, B)`` with 2 worker threads (OMP_NUM_THREADS unset) and with 1;
- a naive diff: load both state dicts (safetensors.torch.load_file), then per tensor convert to float32,
  subtract, and take the norms and the dot product.
Working memory = peak RssAnon (sampled from /proc every 2 ms) minus RssAnon after the imports; mapped file
pages do not count. Each variant runs in its own process.

    python benchmarks/bench_diff.py                 # generates /tmp/layerprobe-bench/{A,B}.safetensors, deletes them
    python benchmarks/bench_diff.py --keep --layers 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, INTER, KV, VOCAB = 2048, 5632, 256, 32000  # TinyLlama-1.1B shapes
EMBED = "model.embed_tokens.weight"


def llama_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.k_proj.weight": (KV, HIDDEN),
                p + "self_attn.v_proj.weight": (KV, HIDDEN),
                p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "mlp.gate_proj.weight": (INTER, HIDDEN),
                p + "mlp.up_proj.weight": (INTER, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, INTER),
                p + "input_layernorm.weight": (HIDDEN,),
                p + "post_attention_layernorm.weight": (HIDDEN,),
            }
        )
    shapes.update({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    return shapes


def generate(a_path: Path, b_path: Path, layers: int) -> int:
    """Write A (random bf16) and B = A + small noise, one tensor at a time; returns the bytes per file."""
    import torch

    shapes = llama_shapes(layers)
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * int(torch.tensor(shape).prod())
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    g = torch.Generator().manual_seed(0)
    with open(a_path, "wb") as fa, open(b_path, "wb") as fb:
        for f in (fa, fb):
            f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in shapes.items():
            a = torch.randn(shape, generator=g).mul_(0.02).to(torch.bfloat16)
            b = (a.float() + 2e-4 * torch.randn(shape, generator=g)).to(torch.bfloat16)
            fa.write(a.view(torch.int16).numpy())
            fb.write(b.view(torch.int16).numpy())
    return 8 + len(raw) + offset


def rss_anon_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------------------------ child process


def child(variant: str, a: str, b: str) -> None:
    import torch
    from safetensors.torch import load_file

    from layerprobe.weights.diff import diff_checkpoints

    base = rss_anon_kb()
    t = time.perf_counter()
    if variant.startswith("stream"):
        df = diff_checkpoints(a, b, threads=int(variant[-2]))
        wall = time.perf_counter() - t
        embed = df[df["param"] == EMBED].set_index("quantity")["value"]
        result = {q: float(embed[q]) for q in ("norm_a", "delta_norm", "cosine")}
    else:
        sa, sb = load_file(a), load_file(b)
        result = {}
        for name in sa:
            x, y = sa[name].float(), sb[name].float()
            d = y - x
            norm_a, norm_b, delta = float(x.norm()), float(y.norm()), float(d.norm())
            cos = float(torch.dot(x.ravel(), y.ravel())) / (norm_a * norm_b)
            if name == EMBED:
                result = {"norm_a": norm_a, "delta_norm": delta, "cosine": cos}
        wall = time.perf_counter() - t
    print(json.dumps({"wall": wall, "base_kb": base, **result}))


def reference(a: Path, b: Path) -> dict:
    """float64 values for the embedding, to see which float32 computation drifts."""
    from safetensors import safe_open

    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        x, y = fa.get_tensor(EMBED).double().ravel(), fb.get_tensor(EMBED).double().ravel()
    return {
        "norm_a": float(x.norm()),
        "delta_norm": float((y - x).norm()),
        "cosine": float(x @ y / x.norm() / y.norm()),
    }


# ------------------------------------------------------------------------------------------------ parent


def measure(cmd: list[str], env: dict) -> tuple[float, int, dict]:
    """Run one variant; returns (wall seconds, peak working memory in kB, the child's JSON or {})."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, rss_anon_kb(proc.pid))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.002)
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    if not out.strip():
        return wall, 0, {}
    res = json.loads(out.strip().splitlines()[-1])
    return res["wall"], max(0, peak - res["base_kb"]), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/layerprobe-bench", help="where to write the generated pair")
    ap.add_argument("--layers", type=int, default=10, help="decoder layers (10: 1.14 GB per file)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "A", "B"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    a, b = out / "A.safetensors", out / "B.safetensors"
    try:
        t = time.perf_counter()
        size = generate(a, b, args.layers)
        print(f"generated 2 x {size / 1e9:.2f} GB bf16 ({args.layers} layers) in {time.perf_counter() - t:.0f} s")
        largest_f32_mb = 4 * VOCAB * HIDDEN / 2**20
        env_default = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env_default["PYTHONPATH"] = str(ROOT)
        env_one = dict(env_default, OMP_NUM_THREADS="1")
        me = [sys.executable, __file__, "--child"]
        variants = {
            "read floor (cat A B)": (["sh", "-c", f"cat '{a}' '{b}' > /dev/null"], env_default),
            "stream diff, 2 threads": (me + ["stream-2t", str(a), str(b)], env_default),
            "stream diff, 1 thread": (me + ["stream-1t", str(a), str(b)], env_one),
            "naive diff (load + float32)": (me + ["naive", str(a), str(b)], env_default),
        }
        subprocess.run(["sh", "-c", f"cat '{a}' '{b}' > /dev/null"], check=True)  # warm the page cache
        runs: dict[str, list[tuple[float, int]]] = {k: [] for k in variants}
        results = {}
        for r in range(args.repeats):
            for name, (cmd, env) in variants.items():
                wall, mem, res = measure(cmd, env)
                runs[name].append((wall, mem))
                results[name] = res
                print(f"  round {r + 1}: {name:<28} {wall:7.2f} s  {mem / 1024:7.0f} MB", flush=True)
        med = {k: (statistics.median(w for w, _ in v), max(m for _, m in v)) for k, v in runs.items()}
        floor = med["read floor (cat A B)"][0]
        naive = med["naive diff (load + float32)"][0]
        print(f"\nmedians of {args.repeats} (machine: {os.cpu_count()} cores; shared machines add noise)")
        print(f"{'variant':<30}{'wall s':>8}{'x floor':>9}{'naive / it':>12}{'work MB':>9}")
        for k, (wall, mem) in med.items():
            print(f"{k:<30}{wall:8.2f}{wall / floor:9.1f}{naive / wall:12.1f}{mem / 1024:9.0f}")
        budget = 2 * largest_f32_mb + 300
        print(f"memory budget: 2 x largest tensor in float32 ({largest_f32_mb:.0f} MB) + 300 MB = {budget:.0f} MB")
        ref = reference(a, b)
        print(f"accuracy on {EMBED} ({VOCAB * HIDDEN / 1e6:.0f}M elements), relative error against float64:")
        for k in ("stream diff, 2 threads", "naive diff (load + float32)"):
            errs = ", ".join(f"{q} {abs(results[k][q] - v) / abs(v):.1e}" for q, v in ref.items() if q != "cosine")
            errs += f", 1 - cosine {abs(ref['cosine'] - results[k]['cosine']) / (1 - ref['cosine']):.1e}"
            print(f"  {k:<30}{errs}")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
