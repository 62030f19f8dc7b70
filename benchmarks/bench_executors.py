"""Wall time of one sweep under each executor: sequential, ``--workers 2`` and Ray with 2 workers.

Each executor runs the whole sweep from empty folders (CPT reuse across executors is off: every run starts bare),
and the numeric columns of its results.csv are compared with the sequential run's. Run it on an otherwise idle
machine; the order of the executors alternates between rounds.

    python benchmarks/bench_executors.py --rounds 1 --threads 1 --out /tmp/bench_executors \
        --json benchmarks/results/executors_toy_study_a.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
EXECUTORS = {
    "sequential": ["--workers", "1"],
    "local --workers 2": ["--workers", "2"],
    "ray --workers 2": ["--executor", "ray", "--workers", "2"],
}


def busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (/proc/stat: user, nice, system, irq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(sweep: Path, name: str, out: Path, extra: list[str]) -> tuple[float, float]:
    """Seconds the sweep takes under one executor, from an empty folder, and the CPU seconds other processes used
    meanwhile (0 on an idle machine; Ray's own workers count as the sweep's only when they are its children)."""
    if out.exists():
        raise SystemExit(f"{out} exists: give an empty --out (this benchmark never deletes run folders)")
    cmd = [sys.executable, "-m", "layerprobe", "sweep", str(sweep), "--out", str(out), "--figures", str(out / "fig")]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # threads: the executor's choice
    t0, busy0, own0 = time.perf_counter(), busy_seconds(), children_seconds()
    subprocess.run(cmd + EXECUTORS[name] + extra, check=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    return seconds, busy_seconds() - busy0 - (children_seconds() - own0)


def max_abs_diff(a: Path, b: Path) -> float:
    """The largest difference between two results.csv tables over their numeric columns, rows matched by cell."""
    x, y = (pd.read_csv(p).set_index("cell").sort_index() for p in (a, b))
    num = x.select_dtypes("number").columns.intersection(y.select_dtypes("number").columns)
    drop = [c for c in num if "seconds" in c or c.endswith("_s") or "time" in c]
    return float((x[num].drop(columns=drop) - y[num].drop(columns=drop)).abs().max().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=ROOT / "experiments/study_a/sweep.yaml")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="an empty folder for the run folders")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of every cell under every executor (the count moves the numbers); 0: each executor's "
        "choice (sequential: the free cores; --workers 2: cores / 2)",
    )
    args = ap.parse_args()
    names = list(EXECUTORS)
    rows = []
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out = args.out / f"round{r}" / name.replace(" ", "_").replace("-", "")
            extra = ["--set", f"threads={args.threads}"] if args.threads else []
            seconds, others = run(args.sweep, name, out, extra)
            rows.append(
                {
                    "round": r,
                    "executor": name,
                    "seconds": round(seconds, 1),
                    "other_cpu_s": round(others, 1),
                    "folder": str(out),
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    median = table.groupby("executor")["seconds"].median()
    base = args.out / "round0" / "sequential" / "results.csv"
    for row in rows:
        row["max_abs_diff_vs_sequential"] = max_abs_diff(base, Path(row["folder"]) / "results.csv")
    result = {
        "sweep": str(args.sweep.relative_to(ROOT)),
        "threads": args.threads or "each executor's choice",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "runs": rows,
        "median_seconds": median.round(1).to_dict(),
        "ratio_to_sequential": (median["sequential"] / median).round(3).to_dict(),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
