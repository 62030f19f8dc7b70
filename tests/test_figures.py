"""Every figure kind layerprobe draws, rendered from synthetic tables: no overlapping texts, no empty axes (the
layout check runs inside save_figure; conftest sets LAYERPROBE_CHECK_FIGURES=raise), and the style's promises —
masked untouched cells, one colour scale across phases, diverging maps centred at 0, factorial facets, SVG/PDF."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from report_fixtures import attribute_records, diff_records, make_sweep, training_records

import layerprobe.plot.style as style


@pytest.fixture
def captured(monkeypatch):
    """The figures handed to save_figure (checked and written as usual), kept open for inspection."""
    figs = []
    real = style.save_figure

    def keep(fig, out, dpi=110, caption=""):
        figs.append((fig, out, caption))
        fig.canvas.draw()
        texts = {
            "ticks": [[t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes],
            "titles": [ax.get_title() for ax in fig.axes],
            "ylabels": [ax.get_ylabel() for ax in fig.axes],
            "xlabels": [ax.get_xlabel() for ax in fig.axes],
            "legends": [lg.get_title().get_text() for lg in fig.legends],
            "n_axes": len(fig.axes),
        }
        figs[-1] = (texts, out, caption)
        return real(fig, out, dpi, caption)

    import layerprobe.plot.effects as effects
    import layerprobe.plot.heatmaps as heatmaps
    import layerprobe.plot.study as study

    for mod in (heatmaps, study, effects):
        monkeypatch.setattr(mod, "save_figure", keep)
    return figs


@pytest.fixture
def heatmap_calls(monkeypatch):
    """The grids and colour arguments every sns.heatmap call of the heatmap module received."""
    import layerprobe.plot.heatmaps as heatmaps

    calls = []
    real = heatmaps.sns.heatmap

    class Spy:
        def __getattr__(self, name):
            return getattr(__import__("seaborn"), name)

        @staticmethod
        def heatmap(data, **kw):
            calls.append((data.copy(), kw))
            return real(data, **kw)

    monkeypatch.setattr(heatmaps, "sns", Spy())
    return calls


def test_layout_check_catches_overlapping_ticks_titles_and_empty_axes(tmp_path):
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(3, 2))
    a.bar(range(30), range(30))
    a.set_xticks(range(30), [f"condition number {i}" for i in range(30)])
    problems = style.layout_problems(fig)
    assert any("x tick 'condition number" in p and "overlaps" in p for p in problems)
    assert any(p.startswith("empty axes") for p in problems)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    ax.set_title("a title much too long for a figure two inches wide, running off both edges")
    assert any("cut off" in p for p in style.layout_problems(fig))
    with pytest.raises(AssertionError, match="overlaps|cut off"):
        style.save_figure(fig, tmp_path / "bad.png")  # conftest: raise
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    ax.set_title("fine")
    fig.tight_layout()
    assert style.layout_problems(fig) == []
    plt.close(fig)


def test_record_heatmaps_share_one_scale_across_phases(tmp_path, captured, heatmap_calls):
    from layerprobe.plot import plot_run
    from layerprobe.record.records import load_records

    run = tmp_path / "run"
    training_records(run, "cpt")
    training_records(run, "sft", frozen_layer=1)
    paths = plot_run(run)
    assert len(paths) == 8 and all(p.stat().st_size > 5000 for p in paths)
    df = load_records(run)
    for q in ("grad_norm", "update_ratio", "drift_ratio"):
        v = df[(df["quantity"] == q) & (df["module"] == "") & (df["param"] == "")]["value"]
        kws = [
            kw
            for (grid, kw) in heatmap_calls
            if grid.columns.name == "step"  # the layer x step panels
            and kw["cbar_kws"]["label"].startswith(q.replace("_", " "))
        ]
        norms = {
            (round(kw["norm"].vmin, 12), round(kw["norm"].vmax, 12))
            if "norm" in kw
            else (round(kw["vmin"], 12), round(kw["vmax"], 12))
            for kw in kws
        }
        pos = v[v > 0]
        assert norms == {(round(pos.min(), 12), round(pos.max(), 12))}, q  # one scale, over both phases
    # layer 1 is frozen in SFT: its row has no value (NaN, drawn grey), never 0
    sft_grid = [g for g, kw in heatmap_calls if "1" in map(str, g.index) and g.isna().all(axis=1).any()]
    assert sft_grid, "the frozen layer's row should be all-missing in an SFT panel"


def test_diff_heatmaps_mask_untouched_and_centre_signed_quantities(tmp_path, captured, heatmap_calls):
    from layerprobe.plot import heatmap_layer_module

    df = diff_records(tmp_path / "run")
    heatmap_layer_module(df, "rel_change_bc", tmp_path / "bc.png", phase="diff")
    grid, kw = heatmap_calls[-1]
    mlp = [c for c in grid.columns if c.startswith("mlp.")]
    assert grid[mlp].isna().all().all() and grid.drop(columns=mlp).notna().all().all()
    assert "weights left exactly unchanged" in captured[-1][2]
    heatmap_layer_module(df, "undo_frac", tmp_path / "undo.png", phase="diff")
    grid, kw = heatmap_calls[-1]
    span = np.nanmax(np.abs(grid.to_numpy()))
    assert kw["center"] == 0 and kw["vmin"] == -span and kw["vmax"] == span and "vlag" in kw["cmap"].name
    heatmap_layer_module(df, "rel_change", tmp_path / "rc.png", phase="diff")
    assert "viridis" in heatmap_calls[-1][1]["cmap"].name


def test_study_a_design_is_drawn_as_facets(tmp_path, captured):
    from layerprobe.sweep import plot_sweep

    table = make_sweep(tmp_path, cells=False)
    table = table[table["condition"] == "baseline"]
    axes = ["cpt.lora_alpha", "sft.lora_alpha", "sft.target_modules"]
    ci = plot_sweep(table, [["cpt.cloze_acc", "sft.cloze_acc"], "sft.general_loss"], axes, tmp_path / "f")
    (both, _, caption), (loss, _, loss_caption) = captured
    assert both["n_axes"] == 4  # 2 rows (after CPT / after SFT) x 2 columns (CPT alpha)
    assert both["titles"][:2] == ["cpt.lora_alpha = 32", "cpt.lora_alpha = 128"]
    assert both["ticks"][-1] == ["A", "B"] and both["legends"] == ["sft.lora_alpha"]
    assert "Student t interval of the mean over 3 cells" in caption
    assert loss["ylabels"][0] == "after SFT (nats/token)"
    assert set(ci["ci"]) == {"t over 3 cells"}


def test_one_factor_with_many_conditions_and_four_factors(tmp_path, captured):
    from layerprobe.sweep import plot_sweep

    t = pd.DataFrame(
        {
            "group": [f"random-layer-choice-{i}" for i in range(8)],
            "sft.gozaru_rate": np.linspace(0, 1, 8),
            "sft.gozaru_rate.n": 60,
        }
    )
    plot_sweep(t, ["sft.gozaru_rate"], ["group"], tmp_path / "one")
    assert "Wilson score interval over n = 60" in captured[-1][2]
    table = make_sweep(tmp_path / "s", cells=False)
    plot_sweep(
        table,
        [["cpt.cloze_acc", "sft.cloze_acc"]],
        ["group", "cpt.lora_alpha", "sft.lora_alpha", "sft.target_modules"],
        tmp_path / "four",
    )
    assert captured[-1][0]["n_axes"] == 2 * 2 * 2  # (metric x group) rows x CPT alpha columns


def test_paired_plot_says_what_minus_what_and_which_side_is_better(tmp_path, captured):
    from layerprobe.sweep import paired_table, plot_paired

    table = make_sweep(tmp_path, cells=False)
    p = paired_table(
        table,
        ["sft.cloze_acc", "sft.general_loss"],
        "baseline",
        ["seed", "cpt.lora_alpha", "sft.lora_alpha", "sft.target_modules"],
    )
    plot_paired(p, tmp_path / "paired.png", "baseline")
    texts, _, caption = captured[-1]
    assert "n = 24 pairs" in caption and "paired Student t interval" in caption
    assert texts["xlabels"] == [
        "condition - baseline (share)\nbetter ->",
        "condition - baseline (nats/token)\n<- better",
    ]
    assert (tmp_path / "paired.png").stat().st_size > 5000


def test_attribution_and_relate_figures(tmp_path, captured):
    from layerprobe.plot.effects import attribution_figures as plot_attribution
    from layerprobe.plot.effects import heatmap_rho

    paths = plot_attribution(attribute_records(tmp_path / "run"), tmp_path / "a")
    assert [p.name for p in paths] == [
        "attribute_cloze_acc.png",
        "attribute_cells_cloze_acc.png",
        "attribute_gozaru_rate.png",
        "attribute_cells_gozaru_rate.png",
    ]
    texts = captured[0][0]
    assert any("reverted to the CPT weights" in t for t in texts["titles"])
    assert not any("base" in t for t in texts["titles"] + texts["ylabels"])  # the CPT model is not called "base"
    table = pd.DataFrame(
        [
            {
                "feature": "final_drift",
                "phase": "sft",
                "layer": l,
                "block": b,
                "outcome": "retention_drop",
                "rho": 0.1 * l - 0.2,
                "p": 0.5,
                "q": 0.6 if l else 0.01,
                "n_runs": 6,
                "p_method": "exact",
            }
            for l in (-1, 0, 1, 2)
            for b in ("attn", "mlp")
        ]
    )
    assert heatmap_rho(table, "final_drift", "sft", "retention_drop", tmp_path / "rho.png").stat().st_size > 5000
    # relate's strata: one panel per stratum (and one colour bar), rho or the partial rho with its own q
    strata = pd.concat(
        [
            table.assign(stratum=s, partial_rho=-table["rho"], partial_q=0.01, n_groups=g, n_runs=n)
            for s, g, n in (("all", 9, 63), ("method=lora", 6, 36), ("method=full", 9, 27))
        ]
    )
    for value in ("rho", "partial_rho"):
        out = heatmap_rho(strata, "final_drift", "sft", "retention_drop", tmp_path / f"{value}.png", value=value)
        assert out.stat().st_size > 5000
        texts, _, caption = captured[-1]
        assert texts["n_axes"] == 3 + 1
        assert texts["titles"][:3] == [
            "all\n63 runs, 9 CPTs",
            "method=lora\n36 runs, 6 CPTs",
            "method=full\n27 runs, 9 CPTs",
        ]
        assert ("partial rho given the total SFT drift" in caption) == (value == "partial_rho")
    with pytest.raises(ValueError, match="has no 'partial_rho'"):
        heatmap_rho(table, "final_drift", "sft", "retention_drop", tmp_path / "x.png", value="partial_rho")


def test_svg_and_pdf_on_request(tmp_path):
    from layerprobe.plot import figure_formats, heatmap_layer_module

    df = diff_records(tmp_path / "run")
    with figure_formats("svg,pdf"):
        out = heatmap_layer_module(df, "rel_change", tmp_path / "x.png", phase="diff")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "x.svg").read_bytes()[:400] and (tmp_path / "x.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="expected a comma-separated list of png, svg, pdf"), figure_formats("jpg"):
        pass


def test_a_30_layer_heatmap_labels_every_few_layers_without_overlap(tmp_path):
    """SmolLM2 has 30 layers: one tick label per layer overlapped at the figure's height (the layout check raised)."""
    from layerprobe.plot.heatmaps import heatmap_layer_step

    rows = [
        {
            "quantity": "grad_norm",
            "param": "",
            "phase": "cpt",
            "run": "r",
            "module": "",
            "block": block,
            "layer": layer,
            "step": step,
            "value": 1.0 + layer + step,
        }
        for layer in range(30)
        for block in ("attn", "mlp")
        for step in (1, 2)
    ]
    out = heatmap_layer_step(pd.DataFrame(rows), "grad_norm", tmp_path / "h.png", phase="cpt")
    assert out.is_file()  # save_figure's layout check (conftest: raise) found no overlapping tick labels
