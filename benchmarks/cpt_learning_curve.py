"""Probe accuracy against CPT steps: how long must a real model read the toy world before it knows it?

Trains the CPT phase of a pipeline config (LoRA, as ``layerprobe train`` would) and evaluates the knowledge
probes every ``--every`` steps on the adapted model itself (no merge): cloze by greedy generation and by
likelihood (so their agreement is measured too), QA by generation. Writes one CSV row per evaluation.

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
    args = ap.parse_args(argv)

    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from layerprobe.config import EvalConfig, load_yaml, resolve
    from layerprobe.evaluate import EvalSet, evaluate_model
    from layerprobe.pipeline import load_data, quiet_libraries
    from layerprobe.stages import (_trainable, _training_args, load_model, load_tokenizer, pack_texts,
                                   resolve_model, resolve_precision)

    data_cfg = load_yaml(args.config)
    data_cfg.setdefault("cpt", {})["max_steps"] = args.steps
    cfg = resolve(data_cfg)
    data = load_data(cfg)
    base = resolve_model(cfg.model, cfg)
    tok = load_tokenizer(base)
    blocks = pack_texts(tok, data.cpt_docs, cfg.cpt.max_length)
    probes = EvalSet(data.eval_set.probes, [], [])
    ecfg = EvalConfig(**{**cfg.to_dict()["eval"], "cloze_scoring": "generate"})
    print(f"{len(data.cpt_docs)} documents, {sum(map(len, blocks))} tokens in {len(blocks)} blocks; "
          f"{len(probes.probes)} probes; precision {resolve_precision(cfg.precision)[1]}", flush=True)
    rows: list[dict] = []
    t_train = [0.0, time.time()]

    def evaluate(model, step):
        t_train[0] += time.time() - t_train[1]
        t = time.time()
        metrics, answers = evaluate_model(model, tok, probes, ecfg)
        cloze = [a for a in answers if a["kind"] == "cloze"]
        row = {"step": step, "cloze_acc": metrics["cloze_acc"], "qa_acc": metrics["qa_acc"],
               "cloze_likelihood_acc": sum(a["greedy"] for a in cloze) / len(cloze),
               "cloze_agreement": sum(a["greedy"] == a["correct"] for a in cloze) / len(cloze),
               "train_seconds": round(t_train[0], 1), "eval_seconds": round(time.time() - t, 1)}
        rows.append(row)
        print(row, flush=True)
        model.train()
        t_train[1] = time.time()

    class Every(TrainerCallback):
        def on_step_end(self, a, state, control, model=None, **kw):
            if state.global_step % args.every == 0:
                evaluate(model, state.global_step)

    with quiet_libraries():
        model = _trainable(load_model(base), cfg.cpt, cfg.seed)
        evaluate(model, 0)
        targs = TrainingArguments(**_training_args(cfg.cpt, Path("/tmp/lp-curve"), cfg.seed,
                                                   resolve_precision(cfg.precision)[0]))
        trainer = Trainer(model=model, args=targs, data_collator=default_data_collator, callbacks=[Every()],
                          train_dataset=Dataset.from_dict({"input_ids": blocks, "labels": blocks}))
        trainer.train()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
