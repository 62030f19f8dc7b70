"""The dose-response experiment's answer: arms compared at matched drift, across runs and within runs.

    python experiments/dose_response/analyze.py --sweep runs/dose_response   # from the run folders
    python experiments/dose_response/analyze.py                              # from the committed tables

With ``--sweep`` it first writes, into figures/dose_response/smollm2-135m/, the sweep's results.csv and
answers.parquet (finished cells only), runs.csv (one row per SFT run: arm, dose, world, seed, block, learning rate,
whole-model / attention / MLP drift, every outcome after CPT and after SFT and their change) and curves.parquet
(every run's probe means at every probe step beside its drift then), and relate/ (``layerprobe relate`` over the SFT
records: relate.csv with method strata and the drift-controlled partial rho, features.parquet, notes.txt). From
runs.csv and curves.parquet, always:

- matched.csv: every pair of arms at the reference drift (claims.yaml), per outcome, with the block (world x seed)
  as the unit: per-block values from the line through the arm's two doses (``across``) and from the runs' own probe
  curves (``within``), paired t over blocks, TOST against the outcome's margin, Holm over each family
  (primary outcomes x pairs; each secondary outcome's pairs), the verdict, and blocks needed for power 0.8;
- fit.csv: the mixed model per outcome, outcome change ~ arm x log(drift / reference) + (1 | block), and with
  worlds and seeds crossed + (1 | world) + (1 | seed) + (1 | block) (column ``random``): its Wald tests of the
  interaction and of the arms at the reference drift, each random intercept's variance, and every fixed effect
  with its interval;
- figures: each outcome against drift per arm (blocks joined, worlds as markers), the within-run curves, and the
  arms at matched drift with their blocks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from layerprobe.analyse.matched import at_drift, contrasts, curve_at_drift, mixed_fit
from layerprobe.analyse.paired import holm, verdicts
from layerprobe.analyse.relate import relate_runs, write_outputs
from layerprobe.plot.probes import probe_means
from layerprobe.plot.style import save_figure, theme
from layerprobe.record.records import load_records
from layerprobe.sweep import load_sweep
from layerprobe.sweep.results import collect
from layerprobe.weights.drift import drift_over_steps, module_norms

HERE = Path(__file__).parent
FIGURES = Path("figures/dose_response/smollm2-135m")
ARMS = ["lora-all", "lora-attn", "lora-mlp", "full-all", "full-first10", "full-last10"]
REFERENCE_ARM = "full-all"
# the fits' random intercepts: per block (world x seed), then per world and per seed as well (the issue's model)
CROSSED: list[tuple[str, ...]] = [(), ("world", "seed")]
# within-run outcomes: probe means over the SFT steps (records), change from step 0
CURVE_OUTCOMES = {
    "probe_logprob.cloze_heldout": "cloze_heldout_logprob",
    "probe_logprob.cloze": "cloze_logprob",
    "probe_logprob.qa": "qa_logprob",
    "style_logodds.instruction": "style_logodds",
}


def run_table(sweep_dir: Path, results: pd.DataFrame, outcomes: list[str]) -> pd.DataFrame:
    """runs.csv: one row per finished SFT cell with its drift (from its records and its CPT's merged weights)."""
    rows, norms = [], {}
    for _, r in results.iterrows():
        run = sweep_dir / r["cell"]
        block = f"w{r['toy.seed']}-s{r['seed']}"
        if block not in norms:
            norms[block] = module_norms(run / "merged")
        drift = drift_over_steps(run, "sft", norms[block]).iloc[-1]
        row = {
            "cell": r["cell"],
            "arm": r["group"],
            "dose": r["condition"].rsplit("-", 1)[1],
            "world": r["toy.seed"],
            "seed": r["seed"],
            "unit": block,
            "learning_rate": _sft_lr(run),
            "drift": drift["all"],
            "drift_attn": drift["attn"],
            "drift_mlp": drift["mlp"],
        }
        for m in outcomes:
            row[f"cpt.{m}"], row[f"sft.{m}"] = r.get(f"cpt.{m}"), r.get(f"sft.{m}")
            row[f"d.{m}"] = r.get(f"sft.{m}") - r.get(f"cpt.{m}")
        rows.append(row)
    return pd.DataFrame(rows)


def _sft_lr(run: Path) -> float:
    return float(yaml.safe_load((run / "config.yaml").read_text())["sft"]["learning_rate"])


def curve_table(sweep_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """curves.parquet: per run and SFT probe step, the probe means and the whole-model drift at that step."""
    out, norms = [], {}
    for _, r in runs.iterrows():
        run = sweep_dir / r["cell"]
        means = probe_means(load_records(run, quantities=["probe_logprob", "probe_top1", "style_logodds"]), "sft")
        wide = means.assign(col=means["quantity"] + "." + means["module"]).pivot_table(
            index="step", columns="col", values="value"
        )
        if r["unit"] not in norms:  # one CPT per block: read its weights once
            norms[r["unit"]] = module_norms(run / "merged")
        drift = drift_over_steps(run, "sft", norms[r["unit"]]).set_index("step")["all"]
        wide["drift"] = drift.reindex(wide.index)
        wide.loc[wide.index == 0, "drift"] = 0.0
        wide = wide.reset_index().assign(run=r["cell"], unit=r["unit"], arm=r["arm"], dose=r["dose"])
        for col, name in CURVE_OUTCOMES.items():
            if col in wide:
                wide[f"d.{name}"] = wide[col] - wide.loc[wide["step"] == 0, col].iloc[0]
        out.append(wide)
    return pd.concat(out, ignore_index=True)


def probe_agreement(sweep_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: the last SFT probe point against the full evaluation of the same model on the same probes (the
    probed subset): largest log-probability difference and the share of top-1 verdicts that agree."""
    rows = []
    for cell in runs["cell"]:
        run = sweep_dir / cell
        rec = load_records(run, quantities=["probe_logprob", "probe_top1", "style_logodds"])
        last = rec[(rec["phase"] == "sft") & (rec["block"] == "probe") & (rec["param"] != "")]
        last = last[last["step"] == last["step"].max()].set_index(["module", "param", "quantity"])["value"]
        answers = [json.loads(line) for line in (run / "eval" / "sft-answers.jsonl").read_text().splitlines()]
        diffs, agree = [], []
        for a in answers:
            key = (a.get("kind"), a.get("prompt"))
            if a.get("kind") in ("cloze", "cloze_heldout") and (*key, "probe_logprob") in last.index:
                diffs.append(abs(last[(*key, "probe_logprob")] - a["logprob"]))
                agree.append(last[(*key, "probe_top1")] == float(a["greedy"]))
            if "style_logodds" in a and ("instruction", a["prompt"], "style_logodds") in last.index:
                diffs.append(abs(last[("instruction", a["prompt"], "style_logodds")] - a["style_logodds"]))
        rows.append(
            {
                "cell": cell,
                "n_compared": len(diffs),
                "max_abs_diff": max(diffs, default=np.nan),
                "top1_agree": float(np.mean(agree)) if agree else np.nan,
            }
        )
    return pd.DataFrame(rows)


def matched_table(runs: pd.DataFrame, curves: pd.DataFrame, claims: dict) -> pd.DataFrame:
    ref, margins = claims["reference_drift"], claims["margins"]
    parts = []
    for family, metrics in (("primary", claims["primary"]), *[(m, [m]) for m in claims["secondary"]]):
        fam = []
        for m in metrics:
            if f"d.{m}" not in runs or runs[f"d.{m}"].isna().all():
                continue
            values = at_drift(runs, f"d.{m}", ref)
            pairs = contrasts(
                values,
                margins.get(m, np.nan),
                claims["alpha"],
                claims["power"],
                arms=[a for a in ARMS if a in set(values["arm"])],
            )
            if len(pairs):
                fam.append(pairs.assign(outcome=m, read="across", n_extrapolated=int(values["extrapolated"].sum())))
        if fam:
            table = pd.concat(fam, ignore_index=True)
            table["p_holm"], table["p_tost_holm"] = holm(table["p"]), holm(table["p_tost"])
            table["verdict"] = verdicts(table["p_holm"], table["p_tost_holm"], claims["alpha"])
            parts.append(table.assign(family=family))
    within = []
    for name in CURVE_OUTCOMES.values():
        col = f"d.{name}"
        if col in curves:
            values = curve_at_drift(curves, col, ref)
            pairs = (
                contrasts(
                    values, np.nan, claims["alpha"], claims["power"], arms=[a for a in ARMS if a in set(values["arm"])]
                )
                if len(values)
                else values
            )
            if len(pairs):
                within.append(pairs.assign(outcome=name, read="within", family=f"within {name}"))
    if not parts + within:
        return pd.DataFrame([{"family": "", "verdict": "no pair of arms measured yet"}])
    return pd.concat(parts + within, ignore_index=True)


def fit_table(runs: pd.DataFrame, claims: dict) -> pd.DataFrame:
    if runs["unit"].nunique() < 3:  # a random intercept per block needs blocks to vary over
        return pd.DataFrame([{"outcome": "", "term": f"not fitted: {runs['unit'].nunique()} block(s), needs 3"}])
    rows = []
    for m in claims["primary"] + claims["secondary"]:
        col = f"d.{m}"
        if col not in runs or runs[col].isna().all() or runs[col].std() == 0:
            continue
        for crossed in CROSSED[: 1 + (runs["world"].nunique() > 1 and runs["seed"].nunique() > 1)]:
            fit = mixed_fit(runs, col, claims["reference_drift"], REFERENCE_ARM, crossed)
            head = {
                "outcome": m,
                "random": " + ".join((*crossed, "block")),
                "n_runs": fit["n_runs"],
                "n_units": fit["n_units"],
                "converged": fit["converged"],
                "block_var": fit["var"]["unit"],
                **{f"{k}_var": fit["var"].get(k, float("nan")) for k in ("world", "seed")},
                "resid_var": fit["resid_var"],
            }
            for test in ("interaction", "arms_at_reference"):
                rows.append({**head, "term": f"wald: {test}", **{k: fit[test][k] for k in ("chi2", "df", "p")}})
            rows += [{**head, **p} for p in fit["params"].to_dict("records")]
    return pd.DataFrame(rows)


def _log_percent_axis(ax) -> None:
    ax.set_xscale("log")
    ax.set_xticks([0.1, 0.2, 0.5, 1, 2])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_outcomes(runs: pd.DataFrame, metrics: list[str], ref: float, out: Path) -> None:
    theme()
    colours = dict(zip(ARMS, plt.get_cmap("tab10").colors))
    markers = dict(zip(sorted(runs["world"].unique()), "osD^v"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for (arm, _unit), g in runs.groupby(["arm", "unit"]):
            g = g.sort_values("drift")
            ax.plot(g["drift"] * 100, g[f"d.{m}"], "-", color=colours[arm], alpha=0.35, lw=1)
            for _, r in g.iterrows():
                ax.plot(r["drift"] * 100, r[f"d.{m}"], markers[r["world"]], color=colours[arm], ms=4)
        ax.axvline(ref * 100, color="grey", ls=":", lw=1)
        _log_percent_axis(ax)
        ax.set_xlabel("whole-model SFT drift (%)")
        ax.set_title(f"{m}: SFT - CPT", fontsize=9)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="-", label=a) for a, c in colours.items()]
    handles += [plt.Line2D([], [], color="k", marker=mk, ls="", label=f"world {w}") for w, mk in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    save_figure(
        fig,
        out,
        caption="each run a point (marker: world), lines join a block's two doses of an arm; "
        "dotted: the reference drift",
    )
    plt.close(fig)


def plot_curves(curves: pd.DataFrame, outcome: str, ref: float, out: Path) -> None:
    theme()
    arms = [a for a in ARMS if a in set(curves["arm"])]
    fig, axes = plt.subplots(1, len(arms), figsize=(3.1 * len(arms), 3.2), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for _run, g in curves[(curves["arm"] == arm) & (curves["drift"] > 0)].groupby("run"):
            g = g.sort_values("step")
            ax.plot(
                g["drift"] * 100,
                g[f"d.{outcome}"],
                "-",
                lw=0.8,
                alpha=0.7,
                color="tab:blue" if g["dose"].iloc[0] == "low" else "tab:red",
            )
        ax.axvline(ref * 100, color="grey", ls=":", lw=1)
        _log_percent_axis(ax)
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("drift at the probe step (%)")
    axes[0][0].set_ylabel(f"{outcome}: change from step 0")
    save_figure(
        fig,
        out,
        caption="within-run curves, one line per run (blue: low dose, red: high dose), probes "
        "every 10 SFT steps; dotted: the reference drift",
    )
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, default=None, help="the sweep folder with run folders (recollect)")
    ap.add_argument("--config", type=Path, default=HERE / "sweep.yaml")
    ap.add_argument("--claims", type=Path, default=HERE / "claims.yaml")
    ap.add_argument("--out", type=Path, default=FIGURES)
    args = ap.parse_args()
    claims = yaml.safe_load(args.claims.read_text())
    metrics = claims["primary"] + claims["secondary"]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        sweep = load_sweep(args.config, out=args.sweep, figures=args.out)
        results = collect(sweep)
        runs = run_table(args.sweep, results, metrics)
        runs.to_csv(args.out / "runs.csv", index=False, float_format="%.6g")
        curve_table(args.sweep, runs).to_parquet(args.out / "curves.parquet", index=False)
        probe_agreement(args.sweep, runs).to_csv(args.out / "probe_vs_eval.csv", index=False, float_format="%.3g")
        # per-(layer, block) SFT features beside the outcomes, by method stratum, permuted within CPT groups
        related = relate_runs(args.sweep, phases=("sft",))
        write_outputs(related, args.out / "relate", figures=False)
        (args.out / "relate" / "notes.txt").write_text("\n".join(related.notes) + "\n")
    runs = pd.read_csv(args.out / "runs.csv")
    curves = pd.read_parquet(args.out / "curves.parquet")
    matched = matched_table(runs, curves, claims)
    matched.to_csv(args.out / "matched.csv", index=False, float_format="%.4g")
    fit = fit_table(runs, claims)
    fit.to_csv(args.out / "fit.csv", index=False, float_format="%.4g")
    ref = claims["reference_drift"]
    plot_outcomes(
        runs,
        ["cpt_text_loss", "cloze_heldout_margin", "qa_acc", "style_logodds"],
        ref,
        args.out / "outcomes_vs_drift.png",
    )
    plot_curves(curves, "cloze_heldout_logprob", ref, args.out / "curves_cloze_heldout.png")
    print(runs.groupby(["arm", "dose"])[["learning_rate", "drift"]].agg(["mean", "min", "max"]).to_string())
    print(
        matched[matched["family"] == "primary"]
        .reindex(columns=["outcome", "a", "b", "diff", "lo", "hi", "p_holm", "verdict", "units_needed"])
        .to_string()
    )
    print(fit[fit["term"].str.startswith(("wald", "not"))].to_string())


if __name__ == "__main__":
    main()
