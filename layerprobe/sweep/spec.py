"""A sweep YAML read into cells (its grammar: :mod:`layerprobe.sweep`), and the sweep folder's state file."""

from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerprobe.core import rundir
from layerprobe.core.config import TrainConfig, resolve
from layerprobe.core.config_values import load_yaml, set_dotted
from layerprobe.evaluation.outcomes import OUTCOMES
from layerprobe.sweep.executors import ExecutorConfig

RESULTS = "results.csv"
SWEEP_JSON = "sweep.json"
CI_TABLE = "ci.csv"
PAIRED_TABLE = "paired.csv"
# Rate metrics and the answer kinds (eval/<phase>-answers.jsonl) they are a share of: their n for Wilson.
RATE_ITEMS = {
    "cloze_acc": ("cloze",),
    "cloze_heldout_acc": ("cloze_heldout",),
    "qa_acc": ("qa",),
    "gozaru_rate": ("instruction",),
    "gozaru_first": ("instruction",),
    "eos_rate": ("instruction",),
    "cut_rate": ("instruction",),
}
PHASES = rundir.EVAL_PHASES
DIFFERENCES = [name for name, (definition, _) in OUTCOMES.items() if " - " in definition]  # not plain copies
_SAFE = re.compile(r"[^\w.%+@=,-]+")


@dataclass
class Cell:
    """One run of a sweep: its folder name, table columns, dotted overrides and resolved config."""

    name: str
    columns: dict[str, Any]
    overrides: dict[str, Any]
    config: TrainConfig


@dataclass
class Sweep:
    """A parsed sweep YAML: the cells to run and where results go."""

    cells: list[Cell]
    out: Path
    figures: Path
    plot: list
    axes: list[str]  # the table columns that tell cells apart (seed excluded)
    source: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    reuse_from: list[Path] = field(default_factory=list)  # other sweep folders whose finished CPTs may be reused
    baseline: str = ""  # a condition every other one is compared with, seed by seed
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where the cells run
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # axis -> {grid label: name shown in figures}


def _label(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "+".join(_label(v) for v in value)
    return str(value)


def _safe(name: str) -> str:
    return _SAFE.sub("_", name).strip("._") or "cell"


def _axis(key: str, values) -> list[tuple[str, Any]]:
    """A grid axis as (label, value) pairs: a list labels values by themselves, a mapping by its keys."""
    if isinstance(values, dict):
        pairs = [(str(k), v) for k, v in values.items()]
    elif isinstance(values, (list, tuple)):
        pairs = [(_label(v), v) for v in values]
    else:
        raise ValueError(f"grid.{key} must be a list of values or a mapping name -> value, got {values!r}")
    if not pairs:
        raise ValueError(f"grid.{key} has no values; give at least one")
    labels = [label for label, _ in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"grid.{key} has repeated values {labels}; name them with a mapping (A: ..., B: ...)")
    return pairs


def _conditions(raw) -> list[tuple[str, str, dict]]:
    if raw is None:
        return [("", "", {})]
    if not isinstance(raw, list) or not raw:
        raise ValueError(
            f"conditions must be a non-empty list of mappings with a name and dotted overrides, got {raw!r}"
        )
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or not c.get("name"):
            raise ValueError(
                f"condition {i} must be a mapping with a 'name' and dotted overrides such as "
                f"sft.select: 'mlp + head'; got {c!r}"
            )
        over = {k: v for k, v in c.items() if k not in ("name", "group")}
        out.append((str(c["name"]), str(c.get("group") or c["name"]), over))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique, got {names}")
    return out


_KEYS = {
    *("base", "set", "grid", "conditions", "seeds", "labels"),
    *("out", "figures", "plot", "reuse_from", "baseline", "executor"),
}


def load_sweep(
    spec: str | os.PathLike | dict,
    out: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    figures: str | os.PathLike | None = None,
) -> Sweep:
    """Read a sweep YAML (or mapping) into its cells; ``overrides`` (dotted) apply to every cell's base config."""
    where = Path(spec).parent if not isinstance(spec, dict) else Path(".")
    data = dict(spec) if isinstance(spec, dict) else load_yaml(Path(spec))
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"unknown sweep key {unknown[0]!r}; valid keys: {', '.join(sorted(_KEYS))}")
    base = _base(data, where, overrides or {})
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ValueError(f"grid must map dotted config keys to value lists, got {grid!r}")
    if "seed" in grid:
        raise ValueError("set seeds with the 'seeds:' list, not in grid")
    axes = [(k, _axis(k, v)) for k, v in grid.items()]
    conditions = _conditions(data.get("conditions"))
    cells = _cells(base, conditions, axes, _seeds(data.get("seeds"), base))
    out_dir = Path(out or data.get("out") or "runs/sweep")
    plot = data.get("plot") or []
    if not isinstance(plot, list):
        raise ValueError(f"plot must be a list of metrics (or lists of metrics shown side by side), got {plot!r}")
    reuse_from = data.get("reuse_from") or []
    if not isinstance(reuse_from, list) or not all(isinstance(r, str) for r in reuse_from):
        raise ValueError(f"reuse_from must be a list of sweep folders, got {reuse_from!r}")
    baseline = data.get("baseline") or ""
    if baseline and baseline not in [c[0] for c in conditions]:
        raise ValueError(
            f"baseline {baseline!r} is not a condition; the conditions are "
            f"{', '.join(c[0] for c in conditions if c[0]) or 'none (add conditions:)'}"
        )
    return Sweep(
        cells,
        out_dir,
        Path(figures or data.get("figures") or out_dir / "figures"),
        plot,
        (["group"] if conditions[0][0] else []) + [k for k, _ in axes],
        "" if isinstance(spec, dict) else str(spec),
        dict(overrides or {}),
        [Path(r) for r in reuse_from],
        baseline,
        ExecutorConfig.from_yaml(data.get("executor")),
        _labels(data.get("labels"), dict(axes)),
    )


def _base(data: dict, where: Path, overrides: dict[str, Any]) -> dict:
    """The config every cell starts from: ``base`` (a YAML path or a mapping) with ``set`` and the overrides."""
    base = data.get("base", {})
    if isinstance(base, (str, os.PathLike)):
        path = Path(base)
        path = where / path if not path.is_absolute() and (where / path).is_file() else path
        base = load_yaml(path)
    if not isinstance(base, dict):
        raise ValueError(f"sweep base must be a config YAML path or a mapping, got {base!r}")
    base = copy.deepcopy(base)
    common = data.get("set") or {}
    if not isinstance(common, dict):
        raise ValueError(f"set must map dotted config keys to values for every cell, got {common!r}")
    for k, v in {**common, **overrides}.items():
        set_dotted(base, k, v)
    return base


def _seeds(seeds, base: dict) -> list[int]:
    if seeds is None:
        return [resolve(base).seed]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    return seeds


def _cells(
    base: dict, conditions: list[tuple[str, str, dict]], axes: list[tuple[str, list]], seeds: list[int]
) -> list[Cell]:
    """One cell per condition x grid point x seed, each with its folder name, table columns and resolved config."""
    cells: list[Cell] = []
    for (cname, group, cover), choice, seed in itertools.product(
        conditions, itertools.product(*[pairs for _, pairs in axes]), seeds
    ):
        cfg_data = copy.deepcopy(base)
        over: dict[str, Any] = {}
        columns: dict[str, Any] = {}
        if cname:
            columns.update(condition=cname, group=group)
        # '{seed}' in a condition's text value becomes the cell's training seed (random:5%@seed={seed}: one layer
        # draw per training seed)
        over.update({k: v.replace("{seed}", str(seed)) if isinstance(v, str) else v for k, v in cover.items()})
        for (key, _), (label, value) in zip(axes, choice):
            over[key] = value
            columns[key] = label
        over["seed"] = seed
        columns["seed"] = seed
        for k, v in over.items():
            set_dotted(cfg_data, k, v)
        parts = ([cname] if cname else []) + [f"{k}={label}" for (k, _), (label, _) in zip(axes, choice)]
        name = _safe(",".join(parts + [f"seed={seed}"]))
        try:
            cfg = resolve(cfg_data)
        except ValueError as e:
            raise ValueError(f"sweep cell {name}: {e}") from None
        cells.append(Cell(name, columns, over, cfg))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError(
            f"two cells share a folder name ({sorted({n for n in names if names.count(n) > 1})[0]}); "
            "give conditions distinct names"
        )
    return cells


def _labels(raw, axes: dict[str, list[tuple[str, Any]]]) -> dict[str, dict[str, str]]:
    """``labels:`` names a grid axis's values for figures and interval tables (``A: all linear``), leaving the
    cells' folder names and results.csv as they are, so finished runs stay found."""
    if not raw:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError(
            f"labels must map a grid key to {{value: name shown}}, e.g. sft.target_modules: {{A: all linear}}; "
            f"got {raw!r}"
        )
    out = {}
    for key, names in raw.items():
        if key not in axes:
            raise ValueError(f"labels.{key}: not a grid key; the grid keys are {', '.join(axes) or 'none'}")
        known = [label for label, _ in axes[key]]
        unknown = [str(k) for k in names if str(k) not in known]
        if unknown:
            raise ValueError(f"labels.{key}: {unknown[0]!r} is not one of its values {known}")
        out[key] = {str(k): str(v) for k, v in names.items()}
    return out


def select_cells(sweep: Sweep, only: str | None) -> list[Cell]:
    if not only:
        return sweep.cells
    chosen = [c for c in sweep.cells if fnmatch.fnmatchcase(c.name, only)]
    if not chosen:
        raise ValueError(f"--only {only!r} matches no cell; the cells are: {', '.join(c.name for c in sweep.cells)}")
    return chosen


def _read_state(out: Path) -> dict:
    f = out / SWEEP_JSON
    state = json.loads(f.read_text()) if f.is_file() else {}
    state.setdefault("cells", {})
    state.setdefault("runs", [])
    return state


def _ran(record: dict) -> bool:
    """Whether a cell's record says its process ran some of its stages (not only found them all done)."""
    return record.get("status") == "finished" and bool(record.get("ran"))


def _write_state(sweep: Sweep, state: dict) -> None:
    state["source"] = sweep.source
    state["overrides"] = sweep.overrides
    f = sweep.out / SWEEP_JSON
    # another process may run other cells of this sweep (--only): keep the cells and runs it wrote meanwhile
    disk = _read_state(sweep.out)
    state["cells"] = {**disk["cells"], **state["cells"]}
    for name, theirs in disk["cells"].items():
        if _ran(theirs) and not _ran(state["cells"][name]):  # a record of the work, not of finding it done
            state["cells"][name] = theirs
    state["runs"] += [r for r in disk["runs"] if r not in state["runs"]]
    tmp = f.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False, default=str))
    os.replace(tmp, f)
