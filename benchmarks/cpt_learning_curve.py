"""Probe accuracy against CPT steps: how long must a real model read the toy world before it knows it?

Trains the CPT phase of a pipeline config (LoRA, as ``layerprobe train`` would) and evaluates the knowledge
probes every ``--every`` steps on the adapted model itself (no merge): cloze and QA by greedy generation. Writes
one CSV row per evaluation and draws the curve next to it (same name, .png).

    python benchmarks/cpt_learning_curve.py --config experiments/smollm2/cell.yaml --steps 240 --every 40 \
        --out benchmarks/results/cpt_learning_curve.csv
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="pipeline YAML (its model, data, cpt and eval sections)")
    ap.add_argument("--steps", type=int, default=240, help="CPT optimizer steps (overrides cpt.max_steps)")
    ap.add_argument("--every", type=int, default=40, help="evaluate every N steps (and at step 0)")
    ap.add_argument("--out", required=True, help="CSV to write")
    ap.add_argument("--redraw", action="store_true", help="only redraw the figure from the CSV at --out")
    args = ap.parse_args(argv)
    if args.redraw:
        import pandas as pd

        return draw(pd.read_csv(args.out), args, Path(args.out))

    from transformers import TrainerCallback

    from layerprobe.core.config import resolve
    from layerprobe.core.config_data import EvalConfig
    from layerprobe.core.config_values import load_yaml
    from layerprobe.evaluation.evaluate import EvalSet, evaluate_model
    from layerprobe.sources.data import pack_texts
    from layerprobe.train.models import (
        hidden_size,
        load_model,
        load_tokenizer,
        make_trainable,
        model_folder,
        resolve_precision,
    )
    from layerprobe.train.pipeline import load_data, quiet_libraries
    from layerprobe.train.stages import cpt_trainer

    data_cfg = load_yaml(args.config)
    data_cfg.setdefault("cpt", {})["max_steps"] = args.steps
    cfg = resolve(data_cfg)
    data = load_data(cfg)
    base = model_folder(cfg.model, cfg)
    tok = load_tokenizer(base)
    blocks = pack_texts(tok, data.cpt_docs, cfg.cpt.max_length)
    probes = EvalSet(data.eval_set.probes, [], [])
    ecfg = EvalConfig(**{**cfg.to_dict()["eval"], "cloze_scoring": "generate"})
    print(
        f"{len(data.cpt_docs)} documents, {sum(map(len, blocks))} tokens in {len(blocks)} blocks; "
        f"{len(probes.probes)} probes; precision {resolve_precision(cfg.precision, hidden_size(base))[1]}",
        flush=True,
    )
    rows: list[dict] = []
    t_train = [0.0, time.time()]

    def evaluate(model, step):
        t_train[0] += time.time() - t_train[1]
        t = time.time()
        metrics, _ = evaluate_model(model, tok, probes, ecfg)
        row = {
            "step": step,
            "cloze_acc": metrics["cloze_acc"],
            "qa_acc": metrics["qa_acc"],
            "train_seconds": round(t_train[0], 1),
            "eval_seconds": round(time.time() - t, 1),
        }
        rows.append(row)
        print(row, flush=True)
        model.train()
        t_train[1] = time.time()

    class Every(TrainerCallback):
        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step % args.every == 0:
                evaluate(model, state.global_step)

    with quiet_libraries():
        model = make_trainable(load_model(base), cfg.cpt, cfg.phase_seed(cfg.cpt))[0]
        trainer, _ = cpt_trainer(cfg, model, tok, data.cpt_docs, Path("/tmp/lp-curve"), [Every()])
        evaluate(trainer.model, 0)
        trainer.train()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    import pandas as pd

    draw(pd.DataFrame(rows), args, out)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def draw(table, args, out: Path) -> None:
    from layerprobe.core.config import resolve
    from layerprobe.core.config_values import load_yaml
    from layerprobe.plot.study import curve_panel

    cfg = resolve(load_yaml(args.config))
    curve_panel(
        table,
        "step",
        ["cloze_acc", "qa_acc"],
        out.with_suffix(".png"),
        caption=f"{cfg.model}, LoRA CPT r={cfg.cpt.r} alpha={cfg.cpt.lora_alpha:g}, lr "
        f"{cfg.cpt.learning_rate:g} {cfg.cpt.lr_scheduler} over {args.steps} steps, "
        f"{cfg.cpt.batch_size}x{cfg.cpt.max_length} tokens/step. Greedy answers, first sentence.",
    )
    print(f"drew {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
