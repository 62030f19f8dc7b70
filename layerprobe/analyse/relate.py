"""Relate per-(layer, block) features of the runs of one or more sweeps to their outcomes, respecting the design.

**Runs and their design.** Each path is a sweep folder (a folder of run folders, each with ``records/`` and
``summary.json``) or a run folder. Every run gets

- ``study``: the sweep folder it came from (a run folder named directly: its parent folder);
- ``method``: how SFT trained, ``lora`` or ``full`` (``sft.method`` of the run's ``config.yaml``; ``unknown``
  without one);
- ``cpt_group``: the CPT it was fine-tuned from, the CPT stage's fingerprint in ``cpt/DONE``
  (:mod:`layerprobe.train.fingerprint`: equal for the runs that trained or reused the same CPT, across sweeps too);
  without one, ``run:<run>`` (a group of its own);
- ``total_drift``: how far SFT moved the whole model, ||W_sft - W_cpt|| / ||W_cpt|| over all weights, frozen
  ones counting as unmoved -- :func:`layerprobe.weights.drift.phase_drift` ``(run, "sft",
  module_norms(RUN/merged))["all"]`` (``total_drift_from = "checkpoint"``). Without the merged checkpoint, from the
  records alone (``"records"``): sqrt(sum_m d_m^2 n_m^2 / sum_m n_m^2) over modules m, with d_m the module's last SFT
  ``drift_ratio`` and n_m its start norm, read as the first SFT ``weight_norm`` (after one recorded update:
  off by at most that update) or, for a module SFT froze, its last CPT ``weight_norm`` (CPT's end is SFT's
  start); modules with neither (never trained) are left out of the denominator, so this can overstate the
  drift of a model with untrained weights (the source says how many were left out).

**Features** per ``(phase, layer, block)`` from the aggregated records rows (``param == ""``, ``module == ""``):

- ``final_drift``: ``drift_ratio`` at the last recorded step of the phase, ||W(end) - W(start)|| / ||W(start)||.
- ``update_path``: sum_i u(s_i) * (s_i - s_{i-1}) over the recorded steps s_1 < s_2 < ... of ``update_ratio``
  (s_0 = 0): each recorded one-step update ratio stands for the steps since the previous record, so the value
  estimates the summed update ratio over all optimizer steps whatever the recording interval (``every:N`` or
  log-spaced). Steps after the last record are not counted.
- ``grad_mass``: sqrt(sum_i g(s_i)^2 * (s_i - s_{i-1})) over the recorded pre-clip ``grad_norm``, the same
  weighting: the root of the summed squared gradient norm over the phase.
- every quantity of the diff records (phase ``diff``: ``rel_change``, ``undo_frac``, ``cos_cpt_sft``, ...).

**Frozen is a category, not zero.** A (layer, block) whose modules all have ``n_trainable == 0`` in a phase's
audit did not move *by design*: its features of that phase (and the diff quantities of SFT's change, ``*_bc``,
``cos_cpt_sft``, ``undo_frac``, ``null_sd_*``, for a block SFT froze) get ``frozen = True`` and are left out of
that cell's correlations, never entered as 0 (a LoRA run that did not adapt the MLP would otherwise pull the MLP's
correlation towards "no drift, little forgetting"). ``n_frozen`` counts the runs left out so.

**Strata.** Correlations are given for ``all`` runs and, when the design varies, per ``method=<m>``, per
``study=<s>`` and per ``study=<s>,method=<m>`` (a stratum with the same runs as an earlier one is not repeated):
pooling LoRA and full fine-tuning can make a relation that neither shows alone.

**Statistics**, per stratum and (feature, phase, layer, block) x outcome, over the stratum's runs having both
values (frozen ones excluded):

- ``rho``: Spearman's rho. ``partial_rho``: the partial Spearman correlation controlling for ``total_drift``
  (does the place matter beyond the size of the SFT step?): the Pearson correlation of the residuals of rank(x)
  and rank(y) after an ordinary least-squares fit of each on [1, rank(total_drift)], ranks over the runs having
  all three.
- p-values by permutation, because runs sharing a CPT are not independent:
  *within CPT groups* when the within-group orderings of the outcome number at least ``min_within`` (40, so that an
  exact within-group p can reach 0.025) and some group has both x and y varying: the outcome (for ``partial_rho``: its
  residual) is permuted only among runs of the same CPT, so the null keeps every CPT's effect and the test asks
  whether x relates to y among runs of one CPT; otherwise *between CPT groups*: x, y (and the control) are averaged
  per CPT group and the same statistic over the group means is tested by permuting the groups' outcomes (each run its
  own group: the plain permutation test over runs). This is the case for CPT-phase features, which runs of one CPT
  share. All orderings are enumerated when there are at most ``permutations`` (2000) of them -- or for rho of up to 9
  units, at most 9! orderings, computed once per tie pattern -- else ``permutations`` random ones (seed ``seed``).
  Two-sided p = min(1, 2 min(P(T* <= t), P(T* >= t))) as ``scipy.stats.permutation_test`` defines it (with random
  orderings the observed one is counted once in each tail, 2 (1 + k) / (1 + B)). A p below ``alpha`` from random
  orderings is refined with more of them (seed + 1), up to B = 4 m / alpha in all for the m tests of the stratum, so
  that the smallest p, 2 / (B + 1), gives q <= alpha / 2 even for a single relation among m tests (with 2000 orderings
  and the ~2600 tests of a 30-layer model no cell could pass Benjamini-Hochberg); whether a row is refined depends on
  its first p alone, so its p stays valid. ``p_method`` names the scheme: ``within-cpt`` / ``cpt-groups`` / ``runs``
  (every group one run), ``exact`` or ``perm``.
- ``rho_tested``, ``partial_rho_tested``: the statistic each p tests, which is not always ``rho``. Within CPT
  groups it is the within-CPT correlation: the ranks (for the partial: the residuals) centred in each CPT group
  before correlating. Permuting inside groups leaves the groups' means where they are, so the pooled rho moves with
  this one alone and both give the same p -- but where the relation between CPTs opposes the one inside them, a
  pooled rho near 0 can carry a tiny p, and only the within-CPT value says what was found. Between CPT groups it is
  the rho of the groups' means; over runs (every group one run) it equals ``rho``.
- ``n_runs`` (runs in the correlation), ``n_groups`` (CPT groups among them, the honest lower bound of the
  number of independent units) and ``n_eff``: n / (1 + (m0 - 1) icc_x icc_y), the design effect of a
  correlation under clustering (Scott & Holt 1982), with m0 = (n - sum_g n_g^2 / n) / (G - 1) and each icc the
  one-way ANOVA intraclass correlation of the ranks within CPT groups, clipped to [0, 1] (n when every group is
  one run or all runs share one CPT).
- ``q``, ``partial_q``: Benjamini-Hochberg over every test of the stratum.

Few units cannot support a claim: the smallest possible two-sided exact p is 2 / n!, 0.083 for 4 runs and 0.017
for 5, so below :data:`MIN_RUNS` = 5 no cell can reach p < 0.05 however strong the relation.

**Inputs kept.** :func:`write_outputs` writes, beside ``relate.csv``, ``features.parquet`` (:data:`FEATURE_COLUMNS`
+ one column per outcome; about 0.3 MB for 63 runs of a 30-layer model): :func:`relate_features` recomputes
the same table from it alone.

This module never imports torch (reading a merged checkpoint's norms for ``total_drift`` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from layerprobe.analyse.relate_config import (
    DESIGN_COLUMNS,
    FEATURE_COLUMNS,
    FEATURES_FILE,
    TABLE_FILE,
    RelateConfig,
    RelateResult,
)
from layerprobe.analyse.relate_features import _tidy, collect, read_features, write_features
from layerprobe.analyse.relate_stats import correlate, min_exact_p
from layerprobe.core.rundir import SUMMARY
from layerprobe.evaluation.outcomes import OUTCOMES

# ------------------------------------------------------------------------------------------ library calls


def _config(config: RelateConfig | None, options: dict) -> RelateConfig:
    if config is not None and options:
        raise ValueError("pass either config= or keyword options, not both")
    return config or RelateConfig(**options)


def relate_runs(
    paths: str | os.PathLike | Iterable[str | os.PathLike], config: RelateConfig | None = None, **options
) -> RelateResult:
    """Correlate per-(layer, block) features of the runs of one or more sweeps with their outcomes, per stratum
    (see the module docstring)."""
    cfg = _config(config, options)
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    features, notes = collect(paths, cfg)
    if features.empty:
        raise ValueError(
            f"none of the runs under {', '.join(map(str, paths))} has feature rows: expected records "
            "of drift_ratio, update_ratio or grad_norm (train with --record) or diff records "
            "(phase 'diff')"
        )
    return relate_features(features, cfg, notes=notes)


def relate_features(
    features: pd.DataFrame | str | os.PathLike, config: RelateConfig | None = None, notes: Sequence[str] = (), **options
) -> RelateResult:
    """The same table from a feature table alone (a DataFrame or the ``features.parquet`` relate wrote)."""
    cfg = _config(config, options)
    if not isinstance(features, pd.DataFrame):
        features = read_features(features)
    outcome_names = [c for c in features.columns if c not in FEATURE_COLUMNS]
    if cfg.outcomes:
        missing = [o for o in cfg.outcomes if o not in outcome_names]
        if missing:
            raise ValueError(f"outcome(s) {missing} not in the feature table; it holds {outcome_names}")
        outcome_names = list(cfg.outcomes)
    if cfg.features:
        unknown = sorted(set(cfg.features) - set(features["feature"]))
        if unknown:
            have = sorted(features["feature"].unique())
            raise ValueError(f"feature(s) {unknown} not found in the runs' records; they have {have}")
        features = features[features["feature"].isin(cfg.features)]
    if cfg.phases:
        features = features[features["phase"].isin([*cfg.phases, "diff"])]
    features = _tidy(features[[*FEATURE_COLUMNS, *outcome_names]])
    per_run = features.groupby("run", sort=True).first()
    design, outcomes = per_run[list(DESIGN_COLUMNS)], per_run[outcome_names]
    if outcomes.shape[1] == 0:
        raise ValueError(
            f"none of the {len(per_run)} summaries holds the outcomes {list(cfg.outcomes or OUTCOMES)}; "
            f"expected {SUMMARY} with 'cpt' and 'sft' entries (cloze_acc, qa_acc, gozaru_rate, ...)"
        )
    notes = [*notes, *_input_notes(outcomes, design)]
    table = correlate(features, outcomes, design, cfg)
    notes = _sample_notes(table, design, cfg) + notes + _stratum_notes(table, cfg)
    return RelateResult(
        table=table, features=features, outcomes=outcomes, design=design, n_runs=len(per_run), notes=notes
    )


def _input_notes(outcomes: pd.DataFrame, design: pd.DataFrame) -> list[str]:
    """Outcomes missing in some runs or constant over them, and where each run's total SFT drift came from."""
    notes = []
    for o in outcomes.columns:
        col = outcomes[o].dropna()
        missing = outcomes.index[outcomes[o].isna()].tolist()
        if missing:
            notes.append(f"outcome {o}: missing in {len(missing)} run(s) ({', '.join(missing[:5])}), left out")
        if len(col) >= 2 and col.nunique() == 1:
            notes.append(f"outcome {o} is the same ({col.iloc[0]:.4g}) in every run: nothing can correlate with it")
    sources = design["total_drift_from"].str.split(" ").str[0].replace("", "missing").value_counts()
    notes.append(
        "total SFT drift (the partial correlation's control): "
        + ", ".join(f"{v} run(s) from {k}" for k, v in sources.items())
    )
    return notes


def _sample_notes(table: pd.DataFrame, design: pd.DataFrame, cfg: RelateConfig) -> list[str]:
    """A warning first when the runs, or their CPT groups, are too few for a claim."""
    alls = table[table["stratum"] == "all"]
    n = int(alls["n_runs"].max()) if len(alls) else 0
    groups = design["cpt_group"].nunique()
    if n < cfg.min_runs:
        return [
            f"too few runs for a claim: {n} run(s) (fewer than {cfg.min_runs}); with n runs the smallest "
            f"p-value an exact two-sided Spearman test can give is 2/n! = {min_exact_p(max(n, 1)):.3g}"
        ]
    if groups < cfg.min_runs:
        return [
            f"only {groups} CPT group(s) among {len(design)} runs: a relation between CPTs rests on "
            f"{groups} independent units"
        ]
    return []


def _stratum_notes(table: pd.DataFrame, cfg: RelateConfig) -> list[str]:
    """Per stratum: how many tests pass q < alpha, and how many beyond the total SFT drift."""
    notes = []
    for stratum, t in table.groupby("stratum", sort=False):
        tested, hits = int(t["p"].notna().sum()), int((t["q"] < cfg.alpha).sum())
        partial = int((t["partial_q"] < cfg.alpha).sum())
        notes.append(
            f"{stratum}: {hits} of {tested} tests pass q < {cfg.alpha} (Benjamini-Hochberg within the "
            f"stratum); controlling for the total SFT drift (partial rho), {partial} pass"
            if hits or partial
            else f"{stratum}: no cell passes q < {cfg.alpha} (Benjamini-Hochberg over {tested} tests): no claim"
        )
    return notes


# ------------------------------------------------------------------------------------------ outputs


def write_outputs(
    result: RelateResult, out_dir: str | os.PathLike, alpha: float = 0.05, figures: bool = True
) -> list[Path]:
    """``relate.csv``, ``features.parquet`` (the inputs, to recompute the table without the run folders) and,
    with ``figures``, heatmaps of rho and of the partial rho as tested (``rho_tested``, ``partial_rho_tested``) per
    (feature, phase, outcome) under ``out_dir``."""
    from layerprobe.plot.effects import heatmap_rho

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / TABLE_FILE]
    result.table.to_csv(paths[0], index=False)
    paths.append(write_features(result.features, out / FEATURES_FILE))
    if not figures:
        return paths
    t = result.table
    for feature, phase, outcome in t[["feature", "phase", "outcome"]].drop_duplicates().itertuples(index=False):
        sub = t[(t["feature"] == feature) & (t["phase"] == phase) & (t["outcome"] == outcome)]
        for value, prefix in (("rho_tested", "rho"), ("partial_rho_tested", "partial")):
            if sub[value].notna().any():
                paths.append(
                    heatmap_rho(
                        t, feature, phase, outcome, out / f"{prefix}_{feature}_{phase}_{outcome}.png", alpha, value
                    )
                )
    return paths
