"""Run the dose-response sweep block by block: one block is a (world, training seed) pair, its CPT and 12 SFT cells.

The blocks run in a Latin-square order, so that whenever the sweep stops, the finished blocks spread over worlds
and seeds alike: (11,1) (12,2) (13,3) first (every world and every seed once), then (11,2) (12,3) (13,1), then
(11,3) (12,1) (13,2). Resumable: finished cells are skipped. Arguments after the script go to the sweep
(``--workers 1``, ``--only 'lora-*'``).

    OMP_NUM_THREADS=1 python experiments/dose_response/run.py     # as run: every cell on one thread

Run it from its own worktree at a fixed commit (``git worktree add ../dr <commit>``), so that work on the package
cannot change a running experiment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layerprobe.sweep import load_sweep, run_sweep
from layerprobe.sweep.executors import ExecutorConfig

HERE = Path(__file__).parent
ORDER = [(11, 1), (12, 2), (13, 3), (11, 2), (12, 3), (13, 1), (11, 3), (12, 1), (13, 2)]


def block_order(cells):
    """The cells sorted by the rank of their (toy.seed, seed) block in ORDER, the sweep's order within a block."""
    rank = {block: i for i, block in enumerate(ORDER)}
    return sorted(cells, key=lambda c: rank[(c.config.toy.seed, c.config.seed)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=HERE / "sweep.yaml")
    ap.add_argument("--workers", type=int, default=None, help="cells at once (default: the YAML's executor)")
    ap.add_argument("--only", default=None, help="glob over cell names")
    args = ap.parse_args()
    sweep = load_sweep(args.config)
    sweep.cells = block_order(sweep.cells)
    executor = sweep.executor if args.workers is None else ExecutorConfig(workers=args.workers)
    run_sweep(sweep, only=args.only, executor=executor)


if __name__ == "__main__":
    main()
