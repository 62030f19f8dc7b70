"""Claims about two arms, tested with the unit of replication as the unit.

A *claim* compares two arms (say SFT on attention and SFT on all linear modules) on one metric. The arms are
trained on the same *units*: the training seed, and the toy world (``toy.seed``) where that varies. Probes,
questions and instructions are nested inside a unit: they measure it, they do not replicate the claim. Every
verdict therefore works on one number per unit and arm, the unit's mean over its items (what the evaluation
writes into ``summary.json`` and the sweep's ``results.csv``):

- ``seed_diffs``: each unit's difference d_u = arm a - arm b; ``diff`` their mean, ``sd`` their standard deviation;
- ``lo``/``hi``: the 95 % Student-t interval of the mean difference (n units, n - 1 degrees of freedom);
- ``p``: the paired t-test of the d_u against 0. When the d_u have no spread (all equal, e.g. at a ceiling) the t
  statistic is undefined and the exact sign test is used instead (three units agreeing give p = 0.25);
- ``p_tost``: the two one-sided t-tests against the claim's equivalence margin ±m (Schuirmann 1987, "A comparison
  of the two one-sided tests procedure and the power approach", J. Pharmacokin. Biopharm. 15:657-680), the larger
  of the two p; sign tests again without spread;
- Holm's step-down over the claims of one ``family`` (Holm 1979, Scand. J. Statist. 6:65-70), separately for ``p``
  and for ``p_tost``;
- ``verdict``: ``differs`` when the Holm-adjusted p < alpha, else ``equivalent`` when the Holm-adjusted p_tost <
  alpha (the whole interval lies inside ±m), else ``inconclusive``. Only ``equivalent`` may be read as "alike";
- ``mde``: the smallest |difference| this design detects with power 0.8 (two-sided paired t, n units, the observed
  sd; :func:`layerprobe.core.stats.t_power`), and ``units_needed``: how many units the same test needs for power 0.8 at
  the observed difference and sd. Both at alpha / m for a family of m claims (Bonferroni, the most Holm asks of one
  claim), so with that many units a claim has power 0.8 to survive its family whatever the others do.

``at_bound`` counts the unit values of a rate that sit exactly at 0 or 1: there the units' spread is squeezed by the
bound and a small p (or an equivalence) says more about the ceiling than about the arms.

Where the per-item answers are at hand (``eval/<phase>-answers.jsonl`` of each run), ``p_items`` is the exact
McNemar test over every (unit, item) pair for 0/1 metrics: a description of how consistently the items move within
units, never the verdict, because it counts items as if they were independent replicates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from layerprobe.analyse.answers import ITEM_METRICS, has_answers, item_values
from layerprobe.core.stats import detectable, mcnemar_p, paired_t, sign_p, units_needed

# the columns that name a unit of replication in a sweep's results, outermost first
UNIT_COLUMNS = ("toy.seed", "seed")
VERDICTS = ("differs", "equivalent", "inconclusive")


@dataclass
class ClaimsConfig:
    """How a family of claims is decided; stated before the claims are computed (a study's ``claims.yaml``)."""

    alpha: float = field(default=0.05, metadata={"help": "family-wise error rate of Holm's procedure"})
    power: float = field(default=0.8, metadata={"help": "power for the detectable difference and units needed"})
    margins: dict = field(
        default_factory=lambda: {
            "cloze_acc": 0.05,
            "cloze_heldout_acc": 0.05,
            "qa_acc": 0.05,
            "gozaru_rate": 0.05,
            "gozaru_first": 0.05,
            "eos_rate": 0.05,
            "style_logodds": 2.0,
            "cloze_margin": 1.0,
            "cloze_heldout_margin": 1.0,
        },
        metadata={
            "help": "equivalence margin per metric: |a - b| < margin counts as alike "
            "(accuracies as fractions, log-odds and margins in nats)"
        },
    )

    def __post_init__(self):
        if not 0 < self.alpha < self.power < 1:  # at power <= alpha the null alone rejects that often
            raise ValueError(
                f"claims need 0 < alpha < power < 1, got alpha={self.alpha}, power={self.power}; "
                "e.g. alpha 0.05, power 0.8"
            )
        bad = {k: v for k, v in self.margins.items() if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise ValueError(f"each equivalence margin must be a positive number, got {bad}; e.g. qa_acc: 0.05")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ClaimsConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        unknown = sorted(set(data) - {"alpha", "power", "margins"})
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; a claims config has alpha, power and margins")
        return cls(**data)

    def margin(self, metric: str) -> float:
        if metric not in self.margins:
            raise ValueError(
                f"no equivalence margin for {metric!r}; state one in the claims config "
                f"(margins: {{{metric}: ...}}), known: {', '.join(self.margins)}"
            )
        return float(self.margins[metric])


@dataclass(frozen=True)
class Arm:
    """One arm of a claim: per unit, its run folder and (when read from a sweep) its row of ``results.csv``."""

    runs: dict  # unit -> run folder
    phase: str = "sft"
    results: dict = field(default_factory=dict)  # unit -> {column: value}


def unit_means(arm: Arm, metric: str) -> pd.Series:
    """The arm's value of ``metric`` per unit: the results table's ``<phase>.<metric>`` where the arm came from a
    sweep, else the mean of the run's per-item answers."""
    if metric not in ITEM_METRICS:
        raise ValueError(f"metric must be one of {', '.join(ITEM_METRICS)}, got {metric!r}")
    column = f"{arm.phase}.{metric}"
    out = {}
    for unit, run in arm.runs.items():
        row = arm.results.get(unit, {})
        value = row.get(column)
        out[unit] = (
            float(value)
            if value is not None and not pd.isna(value)
            else float(item_values(run, arm.phase, metric).mean())
        )
    return pd.Series(out, name=metric, dtype=float)


def measured(arm: Arm, metric: str) -> bool:
    """Whether every run of the arm has ``metric``: a results column or per-item answers of its kind."""
    column = f"{arm.phase}.{metric}"
    for unit, run in arm.runs.items():
        value = arm.results.get(unit, {}).get(column)
        if value is None or pd.isna(value):
            try:
                if item_values(run, arm.phase, metric).empty:
                    return False
            except FileNotFoundError:
                return False
    return True


def paired_items(a: Arm, b: Arm, metric: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Arrays (units x items) of both arms on the units both have and the items every run has."""
    units = sorted(set(a.runs) & set(b.runs))
    if not units:
        raise ValueError(f"the arms share no unit: {sorted(a.runs)} vs {sorted(b.runs)}")
    va = [item_values(a.runs[u], a.phase, metric) for u in units]
    vb = [item_values(b.runs[u], b.phase, metric) for u in units]
    items = sorted(set.intersection(*[set(v.index) for v in va + vb]))
    if not items:
        raise ValueError(f"the arms share no {metric} item")
    return (np.array([v.loc[items].to_numpy() for v in va]), np.array([v.loc[items].to_numpy() for v in vb]), units)


def unit_test(diffs: Sequence[float], margin: float = math.nan, alpha: float = 0.05, power: float = 0.8) -> dict:
    """The unit-level test of one claim from its per-unit differences (see the module docstring): n_units, diff,
    sd, lo, hi, p, test, margin, p_tost, mde, units_needed."""
    d = np.asarray(list(diffs), dtype=float)
    spread = d.size > 1 and np.ptp(d) > 1e-9  # units alike up to float rounding have no t statistic
    t = (
        paired_t(d)
        if spread
        else {
            "mean_diff": float(d.mean()) if d.size else math.nan,
            "p": math.nan,
            "lo": float(d.mean()) if d.size > 1 else math.nan,
            "hi": float(d.mean()) if d.size > 1 else math.nan,
        }
    )
    sd = float(d.std(ddof=1)) if spread else 0.0 if d.size > 1 else math.nan
    out: dict = {
        "n_units": int(d.size),
        "diff": t["mean_diff"],
        "sd": sd,
        "lo": t["lo"],
        "hi": t["hi"],
        "margin": margin,
        "p_tost": math.nan,
        "mde": math.nan,
        "units_needed": math.nan,
    }
    if d.size < 2:
        return {**out, "p": math.nan, "test": "none: fewer than 2 units"}
    if not spread:  # the exact sign test instead, and its one-sided forms for TOST
        out.update(p=sign_p(d), test="sign test (no spread between units)")
        if d[0] != 0:  # units for an exact sign test with every unit agreeing to reach alpha
            out["units_needed"] = float(math.ceil(math.log2(2 / alpha) + 1e-12))
        if margin == margin:
            out["p_tost"] = max(sign_p(d - margin, "less"), sign_p(d + margin, "greater"))
        return out
    out.update(p=t["p"], test="paired t")
    if margin == margin:
        se = sd / math.sqrt(d.size)
        upper = stats.t.cdf((d.mean() - margin) / se, d.size - 1)  # H0: diff >= +m
        lower = stats.t.sf((d.mean() + margin) / se, d.size - 1)  # H0: diff <= -m
        out["p_tost"] = float(max(upper, lower))
    out["mde"] = detectable(d.size, alpha, power) * sd
    out["units_needed"] = units_needed(abs(d.mean()) / sd, alpha, power)
    return out


def compare(a: Arm, b: Arm, metric: str, config: ClaimsConfig | None = None, family_size: int = 1) -> dict:
    """Arm a minus arm b on ``metric`` with the unit as the unit (see the module docstring). ``mde`` and
    ``units_needed`` are computed at alpha / ``family_size``, the level Holm's first step asks of a claim."""
    config = config or ClaimsConfig()
    va, vb = unit_means(a, metric), unit_means(b, metric)
    units = sorted(set(va.index) & set(vb.index))
    if not units:
        raise ValueError(f"the arms share no unit: {sorted(a.runs)} vs {sorted(b.runs)}")
    d = va.loc[units] - vb.loc[units]
    out = {
        "metric": metric,
        "a": float(va.loc[units].mean()),
        "b": float(vb.loc[units].mean()),
        **unit_test(d.to_numpy(), config.margin(metric), config.alpha / family_size, config.power),
        "seed_diffs": " ".join(f"{v:+.3f}" for v in d),
        "units": " ".join(map(str, units)),
    }
    if ITEM_METRICS[metric][2]:  # rates: how many unit values sit at 0 or 1, where the spread says little
        values = np.concatenate([va.loc[units].to_numpy(), vb.loc[units].to_numpy()])
        out["at_bound"] = int(np.isclose(values, 0).sum() + np.isclose(values, 1).sum())
    out.update(p_items=math.nan, a_only=math.nan, b_only=math.nan)
    if ITEM_METRICS[metric][2] and all(has_answers(arm.runs[u], arm.phase) for arm in (a, b) for u in units):
        xa, xb, _ = paired_items(
            Arm({u: a.runs[u] for u in units}, a.phase), Arm({u: b.runs[u] for u in units}, b.phase), metric
        )
        out["p_items"], out["a_only"], out["b_only"] = mcnemar_p(xa, xb)
    return out


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels' ``multipletests``); NaN stays NaN and does not count towards the
    family's size."""
    from statsmodels.stats.multitest import multipletests

    arr = np.asarray(p, dtype=float)
    out = np.full_like(arr, math.nan)
    ok = ~np.isnan(arr)
    if ok.any():
        out[ok] = multipletests(arr[ok], method="holm")[1]
    return out


def verdicts(p_holm: Sequence[float], p_tost_holm: Sequence[float], alpha: float = 0.05) -> list[str]:
    """``differs`` / ``equivalent`` / ``inconclusive`` from the Holm-adjusted p-values (NaN never decides)."""
    return [
        "differs" if p < alpha else "equivalent" if q < alpha else "inconclusive" for p, q in zip(p_holm, p_tost_holm)
    ]


def compare_family(claims: Sequence[dict], config: ClaimsConfig | None = None, min_units: int = 1) -> pd.DataFrame:
    """One row per claim ``{"claim", "a": Arm, "b": Arm, "metric", "family" (optional)}`` with :func:`compare`'s
    columns, Holm's adjustment within each family (``p_holm``, ``p_tost_holm``), the ``verdict`` and ``holds``
    (= differs). A claim whose arms share fewer than ``min_units`` units (a sweep still running) gets a ``missing``
    note and no p-value, and does not count towards its family; so does a claim on a metric its runs did not
    measure (the held-out cloze in runs evaluated before it existed)."""
    config = config or ClaimsConfig()
    ready = [
        len(set(c["a"].runs) & set(c["b"].runs)) >= min_units
        and measured(c["a"], c["metric"])
        and measured(c["b"], c["metric"])
        for c in claims
    ]
    sizes = pd.Series([c.get("family", "all") for c, ok in zip(claims, ready) if ok]).value_counts()
    rows = []
    for c, ok in zip(claims, ready):
        shared = sorted(set(c["a"].runs) & set(c["b"].runs))
        head = {"family": c.get("family", "all"), "claim": c["claim"], "metric": c["metric"]}
        if len(shared) < min_units:
            rows.append(
                {
                    **head,
                    "n_units": len(shared),
                    "p": math.nan,
                    "p_tost": math.nan,
                    "missing": f"{len(shared)} of {min_units} units finished",
                }
            )
            continue
        if not ok:
            rows.append(
                {
                    **head,
                    "n_units": len(shared),
                    "p": math.nan,
                    "p_tost": math.nan,
                    "missing": f"{c['metric']} not measured in these runs",
                }
            )
            continue
        rows.append({**head, **compare(c["a"], c["b"], c["metric"], config, int(sizes[head["family"]])), "missing": ""})
    table = pd.DataFrame(rows)
    table["p_holm"], table["p_tost_holm"] = math.nan, math.nan
    for _, idx in table.groupby("family", sort=False).groups.items():
        table.loc[idx, "p_holm"] = holm(table.loc[idx, "p"].to_numpy())
        table.loc[idx, "p_tost_holm"] = holm(table.loc[idx, "p_tost"].to_numpy())
    table["verdict"] = verdicts(table["p_holm"], table["p_tost_holm"], config.alpha)
    table.loc[table["missing"] != "", "verdict"] = "missing"
    table["holds"] = table["verdict"] == "differs"
    return table


def summary_line(table: pd.DataFrame) -> str:
    tested = table[table["missing"] == ""]
    counts = tested["verdict"].value_counts()
    return f"{len(tested)} of {len(table)} claims tested: " + ", ".join(
        f"{int(counts.get(v, 0))} {v}" for v in VERDICTS
    )


def write_claims(table: pd.DataFrame, out_dir: str | os.PathLike) -> str:
    """``claims.csv`` and the forest plot ``claims.png`` into ``out_dir``; returns a one-line summary."""
    from layerprobe.plot.study import claims_panel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "claims.csv", index=False, float_format="%.6g")
    claims_panel(table, out / "claims.png")
    return f"{summary_line(table)}; {out / 'claims.csv'}"


def sweep_results(folder: str | os.PathLike) -> pd.DataFrame:
    """A sweep folder's results.csv; an empty table while no cell has finished."""
    f = Path(folder) / "results.csv"
    return pd.read_csv(f) if f.is_file() else pd.DataFrame()


def unit_of(row: pd.Series | dict, columns: Sequence[str]):
    """A results row's unit: the seed alone, or a tuple (toy.seed, seed) where the world varies too."""
    key = tuple(int(row[c]) for c in columns)
    return key[0] if len(key) == 1 else key


def unit_columns(results: pd.DataFrame) -> list[str]:
    """The unit columns of a results table: the seed, and ``toy.seed`` when it takes more than one value."""
    return [c for c in UNIT_COLUMNS if c in results and (c == "seed" or results[c].nunique() > 1)]


def sweep_arm(results: pd.DataFrame, folder: str | os.PathLike, phase: str = "sft", **match) -> Arm:
    """The arm of a sweep's results table whose columns equal ``match`` (e.g. condition="mlp"), by unit; no runs
    when no finished cell matches yet."""
    if results.empty:
        return Arm({}, phase)
    rows = results
    for key, value in match.items():
        if key not in rows.columns:
            raise ValueError(f"results have no column {key!r}; columns: {', '.join(map(str, results.columns))}")
        rows = rows[rows[key].astype(str) == str(value)]
    columns = unit_columns(results)
    units = [unit_of(r, columns) for _, r in rows.iterrows()]
    if len(set(units)) < len(units):
        raise ValueError(
            f"{match} matches several cells per unit ({', '.join(columns)}) in {folder}; add the missing columns"
        )
    return Arm(
        {u: Path(folder) / c for u, c in zip(units, rows["cell"])},
        phase,
        {u: r.to_dict() for u, (_, r) in zip(units, rows.iterrows())},
    )
