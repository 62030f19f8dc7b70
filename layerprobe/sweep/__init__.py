"""Sweeps: a grid of pipeline runs (conditions x grid x seeds), each cell a normal run folder, resumable.

A sweep YAML::

    base: config.yaml                  # a TrainConfig YAML (relative to this file) or an inline mapping
    set: {eval.base: false}            # optional: dotted overrides of the base for every cell
    grid:                              # dotted key -> values (cartesian product); a mapping names its values
      cpt.lora_alpha: [32, 128]
      sft.target_modules: {A: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj],
                           B: [q_proj, k_proj, v_proj, o_proj]}
    conditions:                        # optional, non-cartesian designs: a name, an optional group, overrides
      - {name: mlp, sft.select: "mlp + head"}
      - {name: random10-s0, group: random10, sft.select: "random:10%@seed=0 + head"}
      - {name: random5, sft.select: "random:5%@seed={seed}"}   # {seed}: the cell's training seed
      - {name: reseed, sft.seed: 101}  # another SFT seed on each seed's CPT (the seed-to-seed null)
    seeds: [3407]                      # sets `seed`
    out: runs/study_a                  # default sweep folder
    reuse_from: [runs/study_a]         # optional: other sweep folders whose finished CPTs may be reused
    figures: figures/study_a           # optional: figures + copies of results.csv, ci.csv (default <out>/figures)
    plot: [sft.gozaru_rate, [cpt.cloze_acc, sft.cloze_acc]]   # optional panels (a list = metrics side by side)
    baseline: mlp                      # optional: a condition; every other one is compared with it seed by seed
    executor: {name: local, workers: 2}  # optional: where cells run (local, ray, slurm; see sweep.executors)

Cells are ``condition x grid x seeds``, named ``<condition>,<key>=<value>,...,seed=<seed>`` (stable, readable),
each a run folder ``<out>/<cell>``. A cell with a summary.json is skipped; a cell folder made with another
config is refused by the pipeline. A cell whose CPT and merge fingerprints (:mod:`layerprobe.train.fingerprint`: the
base model, the CPT documents, the CPT settings) equal those of a finished cell, here or in ``reuse_from``, starts
from hard-linked copies of that cell's CPT and merge (the pipeline's ``reuse_from``), so it skips them.

Cells run where ``executor:`` (or ``layerprobe sweep --executor``) says: one after another in this process (the
default), on N local worker processes, as Ray tasks or as Slurm jobs (:mod:`layerprobe.sweep.executors`). Every
executor follows one plan (:mod:`layerprobe.sweep.plan`): the cells sharing a CPT wait for the one that trains it
to finish its merge, then fan out; finished cells are skipped; a failed or killed cell is reported and the others
go on; a cell whose folder another process holds (its lock) is skipped. ``results.csv`` is the same whichever
executor ran the cells.

``<out>/results.csv`` has one row per finished cell: the cell's columns (condition, group, grid labels, seed)
and every number in its summary.json flattened (``cpt.cloze_acc``, ``sft.gozaru_rate``,
``stages.sft.seconds``), item counts of the rates (``sft.gozaru_rate.n``, from the answers files), and the
outcomes of :mod:`layerprobe.evaluation.outcomes` that combine two numbers (``retention_drop = cpt.cloze_acc -
sft.cloze_acc``, ``qa_drop``, ``loss_rise``). ``<out>/ci.csv`` has each plotted metric's mean per
condition with a 95 % interval; with ``baseline:``, ``<out>/paired.csv`` has each condition's paired difference
from the baseline (same seed and grid values) with a t interval and p-value, and ``paired.png`` shows them.
``<out>/sweep.json`` records cells, wall times and reuse.
This module never imports torch; the pipeline is imported only to run cells.
"""

from layerprobe.sweep.cell import CellJob, run_cell
from layerprobe.sweep.executors import ExecutorConfig
from layerprobe.sweep.plan import Plan, make_plan
from layerprobe.sweep.results import (
    collect,
    flatten,
    format_results,
    item_counts,
    paired_table,
    plot_paired,
    plot_sweep,
    redraw,
    summarize,
    write_figures,
)
from layerprobe.sweep.runner import run_sweep
from layerprobe.sweep.spec import (
    CI_TABLE,
    PAIRED_TABLE,
    RATE_ITEMS,
    RESULTS,
    SWEEP_JSON,
    Cell,
    Sweep,
    load_sweep,
    select_cells,
)

__all__ = [
    "CI_TABLE",
    "PAIRED_TABLE",
    "RATE_ITEMS",
    "RESULTS",
    "SWEEP_JSON",
    "Cell",
    "CellJob",
    "ExecutorConfig",
    "Plan",
    "Sweep",
    "collect",
    "flatten",
    "format_results",
    "item_counts",
    "load_sweep",
    "make_plan",
    "paired_table",
    "plot_paired",
    "plot_sweep",
    "redraw",
    "run_cell",
    "run_sweep",
    "select_cells",
    "summarize",
    "write_figures",
]
