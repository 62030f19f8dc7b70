"""``run_pipeline``: CPT -> merge -> SFT -> eval into one run folder, resumable stage by stage.

Run folder::

    config.yaml   the resolved config (a rerun with another config is refused unless overwrite)
    cpt/          CPT adapter (or full model)          each stage folder gets DONE (its info as JSON)
    merged/       the CPT model: base + CPT, safetensors + tokenizer       only once its outputs are complete
    sft/          SFT adapter (or full model)
    eval/         metrics and answers of each evaluated model
    records/      Parquet records of both phases (training with record on, and evaluation)
    figures/      heatmaps drawn from the records
    summary.json  metrics before (cpt) and after (sft), wall time per stage, config hash: written last
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from layerprobe.config import TOYWORLD, TrainConfig, dump_yaml, resolve
from layerprobe.evaluate import METRICS, OPTIONAL_METRICS, EvalSet

STAGES = ("cpt", "merge", "sft", "eval")
STAGE_DIRS = {"cpt": "cpt", "merge": "merged", "sft": "sft", "eval": "eval"}
EVAL_PHASES = ("base", "cpt", "sft")
DONE = "DONE"


@dataclass
class PipelineData:
    cpt_docs: list[str]
    sft_rows: list[dict]
    eval_set: EvalSet
    description: str


def default_out() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


# -- data ----------------------------------------------------------------------------------------------------------


def load_data(cfg: TrainConfig) -> PipelineData:
    """CPT documents, SFT rows and the evaluation set, from the toy world or files (fields checked)."""
    from layerprobe import data as D

    d = cfg.data
    toy = None
    if TOYWORLD in (d.cpt, d.sft):
        from layerprobe.toyworld import toy_data

        toy = toy_data(cfg.toy)
    cpt_docs = toy.cpt_docs if d.cpt == TOYWORLD else D.load_cpt_texts(d.cpt, d.cpt_text_field, d.split)
    if d.max_cpt_docs > 0:
        cpt_docs = cpt_docs[: d.max_cpt_docs]
    if d.sft == TOYWORLD:
        sft_rows, instructions = toy.sft_rows, toy.instructions
    else:
        sft_rows = D.load_sft_rows(d.sft, d.split)
        instructions = []
        if not d.instructions and d.heldout > 0:
            if len(sft_rows) <= d.heldout:
                raise ValueError(f"SFT data {d.sft!r} has {len(sft_rows)} rows, not more than data.heldout="
                                 f"{d.heldout} held out for the style evaluation; lower data.heldout or give "
                                 "data.instructions")
            instructions = [{"prompt": r["prompt"][-1]["content"], "answer": r["completion"][-1]["content"]}
                            for r in sft_rows[-d.heldout:]]
            sft_rows = sft_rows[: -d.heldout]
    if d.max_sft_rows > 0:
        sft_rows = sft_rows[: d.max_sft_rows]
    if d.sft != TOYWORLD and d.sft_rewrite == "gozaru":
        from layerprobe.realdata import gozaru_rewrite

        sft_rows = [{**r, "completion": [{**m, "content": gozaru_rewrite(m["content"])} for m in r["completion"]]}
                    for r in sft_rows]
        instructions = [{**r, "answer": gozaru_rewrite(r["answer"])} for r in instructions]
    if d.instructions:
        instructions = D.load_instructions(d.instructions, d.split)
    if d.probes:
        probes = D.load_probes(d.probes, d.split)
    else:
        probes = toy.probes if d.cpt == TOYWORLD else []
    desc = (f"CPT {len(cpt_docs)} documents ({d.cpt}), SFT {len(sft_rows)} rows ({d.sft}), "
            f"{len(probes)} probes, {len(instructions)} held-out instructions")
    if d.general_text:
        general = D.load_cpt_texts(d.general_text, d.cpt_text_field, d.split)
    else:
        general = toy.general_docs if d.cpt == TOYWORLD else []
    mc = []
    if d.mc:
        from layerprobe.realdata import load_jcommonsenseqa

        mc = load_jcommonsenseqa(d.mc, n=cfg.eval.max_mc or None)
    if general or mc:
        desc += f", {len(general)} general-text documents, {len(mc)} multiple-choice questions"
    return PipelineData(cpt_docs, sft_rows, EvalSet(probes, instructions, cpt_docs, general, mc), desc)


# -- the run folder ------------------------------------------------------------------------------------------------


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def prepare_run_dir(out: Path, cfg: TrainConfig, overwrite: bool) -> bool:
    """Create or reuse ``out`` for ``cfg``. Returns True when resuming a folder made with the same config."""
    import yaml

    cfg_file = out / "config.yaml"
    if out.exists() and any(out.iterdir()):
        if not cfg_file.is_file():
            raise FileExistsError(f"{out} exists and is not a layerprobe run folder (no config.yaml); "
                                  "choose another --out")
        old = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
        try:
            same = resolve(old).hash() == cfg.hash()
        except ValueError:
            same = False
        if same:
            return True
        if not overwrite:
            diff = _differences(old, cfg.to_dict())
            shown = "; ".join(diff[:3]) + (f"; ... ({len(diff)} in all)" if len(diff) > 3 else "")
            raise FileExistsError(f"{out} was made with a different config ({shown or 'unreadable config.yaml'}); "
                                  "pass --overwrite to replace it, or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = cfg_file.with_suffix(".yaml.tmp")
    tmp.write_text(f"# layerprobe run config (hash {cfg.hash()})\n" + dump_yaml(cfg), encoding="utf-8")
    os.replace(tmp, cfg_file)
    return False


def _done(run_dir: Path, stage: str) -> dict | None:
    f = run_dir / STAGE_DIRS[stage] / DONE
    return json.loads(f.read_text()) if f.is_file() else None


def _mark_done(run_dir: Path, stage: str, info: dict) -> None:
    f = run_dir / STAGE_DIRS[stage] / DONE
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str, ensure_ascii=False))
    os.replace(tmp, f)


def _clear_stage(run_dir: Path, stage: str) -> None:
    """Remove a stage's folder and the records it wrote, before (re)running it."""
    shutil.rmtree(run_dir / STAGE_DIRS[stage], ignore_errors=True)
    rec = run_dir / "records"
    if not rec.is_dir():
        return
    if stage in ("cpt", "sft"):
        for f in list(rec.glob(f"{stage}-r*.parquet")) + list(rec.glob(f"meta-{stage}.json")) + \
                list(rec.glob(f".reference-{stage}-*")):
            f.unlink()
    elif stage == "eval":
        import pyarrow.parquet as pq

        for f in rec.glob("*.parquet"):
            blocks = set(pq.read_table(f, columns=["block"]).column("block").to_pylist())
            if blocks == {"eval"}:
                f.unlink()


# -- the pipeline --------------------------------------------------------------------------------------------------


def _recorder(cfg: TrainConfig, run_dir: Path, phase: str) -> list:
    if not cfg.record:
        return []
    from layerprobe.recorder import RecorderCallback

    r = cfg.recorder
    return [RecorderCallback(run_dir, run=run_dir.name, phase=phase, grad_every=r.grad_every,
                             update_every=r.update_every, drift_every=r.drift_every)]


def _eval_stage(cfg: TrainConfig, run_dir: Path, base: str, data: PipelineData, steps: dict[str, int],
                progress: bool) -> dict:
    from layerprobe.evaluate import evaluate_model
    from layerprobe.records import RecordWriter
    from layerprobe.stages import load_model, load_tokenizer, phase_model

    t0 = time.time()
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    phases = [p for p in EVAL_PHASES if p != "base" or cfg.eval.base]
    for phase in phases:
        model_dir, adapter = phase_model(run_dir, phase, base)
        model = load_model(model_dir, adapter)
        tok = load_tokenizer(adapter or model_dir)
        metrics, rows = evaluate_model(model, tok, data.eval_set, cfg.eval, cfg.cpt.max_length, progress)
        del model
        results[phase] = metrics
        (out / f"{phase}.json").write_text(json.dumps(metrics, indent=2))
        with open(out / f"{phase}-answers.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    for phase in ("cpt", "sft"):
        w = RecordWriter(run_dir, run=run_dir.name, phase=phase)
        for q in METRICS + OPTIONAL_METRICS:
            if q in results[phase]:
                w.add(steps[phase], -1, "eval", "", "", q, results[phase][q])
        w.flush()
    n = data.eval_set.limited(cfg.eval)
    return {"what": f"evaluated the {', '.join(phases)} models on {len(n.probes)} probes and {len(n.instructions)} "
                    "held-out instructions", "out": str(out), "seconds": round(time.time() - t0, 1),
            "metrics": results}


@contextlib.contextmanager
def quiet_libraries():
    """Silence the libraries' own progress bars and deprecation chatter; the pipeline prints its own lines."""
    import warnings

    import datasets
    from transformers.utils import logging as hf_logging

    verbosity, hf_bars, ds_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), \
        datasets.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if ds_bars:
            datasets.enable_progress_bars()


def run_pipeline(cfg: TrainConfig, out_dir: str | os.PathLike | None = None, overwrite: bool = False,
                 progress: bool = False, log: Callable[[str], None] | None = None,
                 only: str | None = None) -> dict:
    """Run CPT -> merge -> SFT -> eval (and figures) into ``out_dir``; returns the summary dict.

    Stages already finished in ``out_dir`` with the same config are skipped, and a stage that runs clears
    the stages after it; a folder made with another config is refused unless ``overwrite``. ``only`` runs
    one stage (the ones before it must be done). ``summary.json`` is written only once every stage is done.
    """
    with quiet_libraries():
        return _run(cfg, out_dir, overwrite, progress, log or (lambda s: None), only)


def choose_threads() -> str | None:
    """Use only the cores other processes leave free, unless OMP_NUM_THREADS says otherwise.

    On a small shared machine two torch processes that each take every core make OpenMP's barriers wait out
    whole scheduler slices: measured here, a toy CPT step went from 0.17 s to 7-8 s (45x) while another
    training job held the same 2 cores. Returns a note for the log when it lowered the count.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return None
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0]
    threads = max(1, min(torch.get_num_threads(), cores - int(busy)))  # only whole busy cores count
    if threads >= torch.get_num_threads():
        return None
    torch.set_num_threads(threads)
    return (f"{threads} of {cores} cores (load average {busy:.1f}: other processes are using the rest; "
            "set OMP_NUM_THREADS to choose)")


def _run(cfg: TrainConfig, out_dir, overwrite: bool, progress: bool, log: Callable[[str], None],
         only: str | None) -> dict:
    from layerprobe.stages import resolve_model, run_cpt, run_merge, run_sft

    if only is not None and only not in STAGES:
        raise ValueError(f"unknown stage {only!r}; expected one of {', '.join(STAGES)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads_note = choose_threads()
    t_start = time.time()
    run_dir = Path(out_dir) if out_dir else default_out()
    if only not in (None, STAGES[0]) and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder with finished stages; run `layerprobe train --out "
                                f"{run_dir}` or the stages before {only} first")
    data = load_data(cfg)
    t0 = time.time()
    base = resolve_model(cfg.model, cfg, progress=progress)
    base_seconds = round(time.time() - t0, 1)
    if cfg.model == TOYWORLD:
        built = json.loads((Path(base) / "build.json").read_text())
        how = f"built in {base_seconds:.0f}s" if base_seconds > 5 else "cached"
        log(f"base       toy base model, {built['params'] / 1e6:.1f}M parameters ({how}) -> {base}")
    else:
        log(f"base       {cfg.model} -> {base}")
    resumed = prepare_run_dir(run_dir, cfg, overwrite)
    log(f"data       {data.description}")
    if threads_note:
        log(f"threads    {threads_note}")

    infos: dict[str, dict] = {}
    ran = False
    for i, stage in enumerate(STAGES, 1):
        head = f"[{i}/{len(STAGES)}] {stage:<6}"
        info = _done(run_dir, stage)
        if only is not None and stage != only:
            if info is None:
                if STAGES.index(stage) < STAGES.index(only):
                    raise ValueError(f"stage {stage} is not done in {run_dir}; run `layerprobe {stage} --out "
                                     f"{run_dir}` (or `layerprobe train --out {run_dir}`) first")
                break
            infos[stage] = info
            continue
        if info is not None:
            infos[stage] = info
            log(f"{head} already done, skipped -> {info['out']}")
            continue
        ran = True
        for later in STAGES[i - 1:]:
            _clear_stage(run_dir, later)
        (run_dir / "summary.json").unlink(missing_ok=True)
        out = run_dir / STAGE_DIRS[stage]
        out.mkdir(parents=True, exist_ok=True)
        if stage == "cpt":
            info = run_cpt(cfg, base, data.cpt_docs, out, _recorder(cfg, run_dir, "cpt"), progress)
        elif stage == "merge":
            info = run_merge(base, run_dir / "cpt", out)
        elif stage == "sft":
            info = run_sft(cfg, str(run_dir / "merged"), data.sft_rows, out, _recorder(cfg, run_dir, "sft"), progress,
                           replay_docs=data.cpt_docs)
        else:
            steps = {p: infos[p]["steps"] for p in ("cpt", "sft")}
            info = _eval_stage(cfg, run_dir, base, data, steps, progress)
        _mark_done(run_dir, stage, info)
        infos[stage] = info
        log(f"{head} {info['what']} ({info['seconds']:.0f}s) -> {info['out']}")

    if "eval" not in infos:
        return {"run": run_dir.name, "config_hash": cfg.hash(), "stages": infos}
    if not ran and (run_dir / "summary.json").is_file():  # a finished run: nothing to redo or rewrite
        return json.loads((run_dir / "summary.json").read_text())
    figures = _figures(run_dir, cfg, log)
    metrics = infos["eval"]["metrics"]
    summary = {
        "run": run_dir.name, "config_hash": cfg.hash(), "model": cfg.model, "base_model": base,
        "resumed": resumed, **{p: metrics[p] for p in EVAL_PHASES if p in metrics},
        "stages": {s: {k: v for k, v in infos[s].items() if k in ("what", "out", "steps", "final_loss", "seconds")}
                   for s in STAGES},
        "base_seconds": base_seconds, "wall_seconds": round(time.time() - t_start, 1), "figures": figures,
    }
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(_no_nan(summary), indent=2, ensure_ascii=False, default=str))
    os.replace(tmp, run_dir / "summary.json")
    return summary


def _no_nan(x):
    """NaN (a metric with nothing to measure) becomes null, so summary.json is strict JSON."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def _figures(run_dir: Path, cfg: TrainConfig, log) -> list[str]:
    """Heatmaps of the run's records (only recorded runs have training records to draw)."""
    if not cfg.record:
        return []
    from layerprobe.plot import plot_run

    paths = [str(p) for p in plot_run(run_dir) or []]
    log(f"figures    {len(paths)} heatmaps -> {run_dir / 'figures'}")
    return paths


def format_table(summary: dict) -> str:
    """The before/after table: one row per metric, one column per evaluated model."""
    phases = [p for p in EVAL_PHASES if p in summary]
    label = {"cpt": "cpt (before)", "sft": "sft (after)"}

    def cell(v, metric: str) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        return f"{v:.0f}" if metric == "n_probes" else f"{v:.3f}"

    lines = [" " * 14 + "".join(f"{label.get(p, p):>14}" for p in phases)]
    shown = METRICS + tuple(m for m in OPTIONAL_METRICS if any(m in summary[p] for p in phases))
    lines += [f"{m:<14}" + "".join(f"{cell(summary[p].get(m), m):>14}" for p in phases) for m in shown]
    return "\n".join(lines)
