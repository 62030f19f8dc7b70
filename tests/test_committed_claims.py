"""The committed claims tables obey the project's inference rule, re-checked from their own columns.

Every ``claims.csv`` under ``figures/`` is recomputed with plain scipy/statsmodels calls: the paired t-test on the
per-unit differences printed in ``seed_diffs``, Holm's step-down within each family, and the verdict rule (differs
only when the Holm-adjusted p < 0.05; equivalent only when, in addition, the Holm-adjusted TOST p < 0.05). A table
edited by hand, or written by an older rule, fails here.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

ROOT = Path(__file__).resolve().parents[1]
TABLES = sorted((ROOT / "figures").rglob("claims.csv"))


def test_there_are_claims_tables():
    names = {str(p.relative_to(ROOT)) for p in TABLES}
    assert {"figures/study_a/smollm2-135m/claims.csv", "figures/study_b/smollm2-135m/claims.csv"} <= names


@pytest.mark.parametrize("path", TABLES, ids=lambda p: str(p.relative_to(ROOT / "figures")))
def test_claims_table_follows_the_rule(path):
    table = pd.read_csv(path)
    tested = table[table["p"].notna()]
    assert set(tested["verdict"]) <= {"differs", "equivalent", "inconclusive"}
    assert (table.loc[table["p"].isna(), "verdict"] == "missing").all()
    for _, row in tested.iterrows():
        diffs = np.array([float(v) for v in row["seed_diffs"].split()])
        assert len(diffs) == row["n_units"]
        assert diffs.mean() == pytest.approx(row["diff"], abs=1e-3)  # seed_diffs are printed to 3 decimals
        if row["test"] == "paired t":
            p = stats.ttest_1samp(diffs, 0.0).pvalue
            # rounding the differences to 3 decimals moves p a little; a pooled-probe p would be off by orders
            assert p == pytest.approx(row["p"], rel=0.1, abs=0.01), row["claim"]
            lo, hi = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
            assert (lo, hi) == pytest.approx((row["lo"], row["hi"]), abs=2e-3), row["claim"]
    for _, fam in tested.groupby("family"):
        assert fam["p_holm"].to_numpy() == pytest.approx(multipletests(fam["p"], method="holm")[1], rel=1e-4, abs=1e-6)
        tost = fam["p_tost"].notna()
        if tost.any():
            expected = multipletests(fam.loc[tost, "p_tost"], method="holm")[1]
            assert fam.loc[tost, "p_tost_holm"].to_numpy() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    differs = tested["p_holm"] < 0.05
    equivalent = ~differs & (tested["p_tost_holm"] < 0.05)
    expected = np.where(differs, "differs", np.where(equivalent, "equivalent", "inconclusive"))
    assert tested["verdict"].tolist() == expected.tolist()
    assert (tested["holds"].astype(bool) == differs).all()
