"""The plan every executor follows: which cells wait for which, so each CPT is trained once.

Cells whose CPT and merge would get equal fingerprints form a group. The first cell of a group to run trains its
CPT (and merge); the others wait until one cell of the group has finished its merge (while it goes on with SFT and
evaluation), then fan out and start from hard-linked copies of that cell's CPT and merge (the pipeline's
``reuse_from``, with that cell's folder first). A group with a finished cell before the sweep starts has nothing to
wait for. If the cell that trains a group's CPT fails before its merge is done, the next cell of the group takes its
place (starting from the failed cell's CPT when that one finished).

The group key is computed from the configs alone (no data loaded, no base model built): the config entries the
CPT fingerprint reads (:func:`layerprobe.train.fingerprint.stage_inputs`), with the ``model``, ``data`` and ``toy``
entries standing in for the content hashes of the base model and the CPT documents. Equal keys give equal
fingerprints; cells with different keys whose fingerprints happen to agree just do not wait for each other.
Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from layerprobe.core import rundir
from layerprobe.core.keys import digest
from layerprobe.core.run_results import read_config_dict
from layerprobe.sweep.spec import Cell
from layerprobe.train.fingerprint import _config_part

# Config entries the CPT fingerprint reads as content hashes (base model, CPT documents): here they stand in for them.
_CONTENT = ("model", "data", "toy")


def cpt_key(config) -> str:
    """A key equal for cells that train the same CPT (a stand-in for the CPT+merge fingerprint from the config, or
    from a run folder's config.yaml as a dict)."""
    data = config if isinstance(config, dict) else config.to_dict()
    return digest({**_config_part(data, "cpt"), **{k: data.get(k) for k in _CONTENT}})


@dataclass
class Plan:
    """The cells to run (in sweep order), their CPT groups, and which groups already have a finished cell."""

    cells: list[Cell]
    out: Path
    group: dict[str, str]  # cell name -> CPT group key (its own name without reuse: no waiting)
    finished: set[str] = field(default_factory=set)  # cells finished before this run: skipped
    donor: dict[str, Path] = field(default_factory=dict)  # group -> the folder of its first finished cell

    def ready(self, name: str, running: set[str]) -> bool:
        """Whether ``name`` may start: its group has a finished CPT (a running cell of the group whose merge is done
        becomes its donor), or no cell of its group is running (then this cell trains it)."""
        g = self.group[name]
        if g not in self.donor:
            mates = sorted(r for r in running if self.group[r] == g)
            merged = next((r for r in mates if "merge" in rundir.done_stages(self.out / r)), None)
            if merged is None:
                return not mates
            self.donor[g] = self.out / merged
        return True

    def next(self, pending: list[str], running: set[str]) -> str | None:
        """The first pending cell (in sweep order) that may start, or None."""
        return next((n for n in pending if self.ready(n, running)), None)

    def done(self, name: str, ok: bool) -> None:
        """Note a cell's end: a finished cell's CPT releases the cells of its group."""
        if ok:
            self.donor.setdefault(self.group[name], self.out / name)

    def donors(self, name: str, others: list[Path]) -> list[Path]:
        """Where ``name`` may find a finished CPT: its group's finished cell first (so every cell names the same
        donor, however the cells were spread over workers), then the sweep folder and ``others``."""
        first = self.donor.get(self.group[name])
        return ([first] if first else []) + [self.out, *others]

    def role(self, name: str, pending: list[str]) -> str:
        """What a pending cell will do about its CPT, for --dry-run and the plan line."""
        g = self.group[name]
        if g in self.donor:
            d = self.donor[g]
            return f"reuses the CPT of {d.name if d.parent == self.out else d}"
        first = next(n for n in pending if self.group[n] == g)
        return "trains its CPT" if first == name else f"waits for the CPT of {first}"

    def summary(self, pending: list[str]) -> str:
        trains = sum(self.role(n, pending) == "trains its CPT" for n in pending)
        return (
            f"{len(self.cells)} cells: {len(self.finished)} finished, {trains} train a CPT, "
            f"{len(pending) - trains} start from another cell's CPT"
        )


def make_plan(cells: list[Cell], out: Path, reuse: bool = True, reuse_from: list[Path] | tuple = ()) -> Plan:
    """The plan of ``cells`` of a sweep in ``out``; ``reuse=False``: every cell trains its own CPT, none waits.
    A finished run in a ``reuse_from`` folder with a group's CPT settings releases that group from the start."""
    group = {c.name: cpt_key(c.config) if reuse else c.name for c in cells}
    plan = Plan(cells, Path(out), group)
    for c in cells:
        if rundir.summary_path(plan.out / c.name).is_file():
            plan.finished.add(c.name)
            plan.done(c.name, True)
    wanted = set(group.values()) - set(plan.donor) if reuse else set()
    for folder in map(Path, reuse_from if wanted else ()):
        for run in sorted(folder.iterdir()) if folder.is_dir() else []:
            if rundir.summary_path(run).is_file() and rundir.config_path(run).is_file():
                key = cpt_key(read_config_dict(run))
                if key in wanted:
                    plan.donor.setdefault(key, run)
    return plan
