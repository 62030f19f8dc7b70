"""Each evaluation lever alone, on one saved model: what it costs and whether the numbers hold.

    python benchmarks/bench_eval_levers.py --config experiments/smollm2/cell.yaml --model runs/cell/merged \
        --result benchmarks/results/eval_levers.json

- cloze by generation vs by likelihood (one forward pass): seconds and agreement probe by probe;
- QA generation stopping at the first sentence end vs running to the budget: seconds, tokens, same verdicts?
- QA generation in length-sorted batches vs in the given order: seconds, same answers?
Each variant runs twice, alternating, and the faster run counts (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the pipeline YAML whose data and eval settings to use")
    ap.add_argument("--model", required=True, help="a saved model folder (e.g. a run's merged/ CPT model)")
    ap.add_argument("--result", default=None, help="JSON file to write")
    args = ap.parse_args(argv)

    from layerprobe.core.config import resolve
    from layerprobe.core.config_values import load_yaml
    from layerprobe.evaluation import evaluate as E
    from layerprobe.train.models import load_model, load_tokenizer
    from layerprobe.train.pipeline import load_data, quiet_libraries

    cfg = resolve(load_yaml(args.config))
    data = load_data(cfg).eval_set.limited(cfg.eval)
    cloze = [p for p in data.probes if p["kind"] == "cloze"]
    qa = [p for p in data.probes if p["kind"] == "qa"]
    with quiet_libraries():
        model, tok = load_model(args.model), load_tokenizer(args.model)
        model.eval()
        b, n = cfg.eval.batch_size, cfg.eval.max_new_tokens

        def timed(fn):
            best, out = float("inf"), None
            for _ in range(2):
                t = time.perf_counter()
                out = fn()
                best = min(best, time.perf_counter() - t)
            return round(best, 2), out

        variants = {
            "cloze_generate": lambda: E.generate(
                model, tok, [p["prompt"] for p in cloze], n, b, False, stop_at_sentence=True
            ),
            "cloze_likelihood": lambda: E.answer_scores(
                model,
                tok,
                [p["prompt"] for p in cloze],
                [E.continuation(p["prompt"], p["answer"]) for p in cloze],
                False,
                b,
            ),
            "qa_stop_at_sentence": lambda: E.generate(
                model, tok, [p["prompt"] for p in qa], n, b, True, stop_at_sentence=True
            ),
            "qa_to_budget": lambda: E.generate(model, tok, [p["prompt"] for p in qa], n, b, True),
            "qa_given_order": lambda: E.generate(
                model, tok, [p["prompt"] for p in qa], n, b, True, stop_at_sentence=True, by_length=False
            ),
        }
        res = {k: timed(f) for k, f in variants.items()}
    gen = [E.contains_answer(E.first_sentence(t), p["answer"]) for p, (t, _) in zip(cloze, res["cloze_generate"][1])]
    lik = [g for _, g in res["cloze_likelihood"][1]]
    verdict = {
        k: [E.contains_answer(E.first_sentence(t), p["answer"]) for p, (t, _) in zip(qa, res[k][1])]
        for k in ("qa_stop_at_sentence", "qa_to_budget", "qa_given_order")
    }
    result = {
        "model": args.model,
        "config": args.config,
        "n_cloze": len(cloze),
        "n_qa": len(qa),
        "batch_size": b,
        "max_new_tokens": n,
        "seconds": {k: v[0] for k, v in res.items()},
        "cloze_acc": {"generate": sum(gen) / len(gen), "likelihood": sum(lik) / len(lik)},
        "cloze_agreement": sum(a == c for a, c in zip(gen, lik)) / len(gen),
        "cloze_likelihood_only_wrong": sum(a and not c for a, c in zip(gen, lik)),
        "qa_acc": {k: sum(v) / len(v) for k, v in verdict.items()},
        "qa_same_verdicts": {
            k: sum(a == c for a, c in zip(verdict["qa_stop_at_sentence"], v)) / len(v) for k, v in verdict.items()
        },
        "qa_same_answers_sorted_vs_given_order": sum(
            a[0] == c[0] for a, c in zip(res["qa_stop_at_sentence"][1], res["qa_given_order"][1])
        )
        / len(qa),
    }
    print(json.dumps(result, indent=2))
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
