#!/usr/bin/env bash
# Study A: does SFT erase what CPT taught, per CPT lora_alpha x SFT lora_alpha x SFT target_modules?
#   experiments/study_a/run.sh                        # the built-in toy world (the committed results)
#   experiments/study_a/run.sh --model smollm2-135m   # SmolLM2-135M: fictional news (CPT), dolly-ja in ござる style (SFT)
# Further arguments go to `layerprobe sweep` (--dry-run, --only GLOB, --set KEY=VALUE). Resumable: rerun to continue.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
if [[ "${1:-}" == "--model" ]]; then
  model=$2; shift 2
  # CPU-sized: 600 news articles, 2,000 SFT rows (+50 held out for the style), sequences of 256 tokens,
  # 200 CPT and 150 SFT steps. Retention is the loss on the CPT text: no cloze probes exist for the news.
  exec "$PY" -m layerprobe sweep experiments/study_a/sweep.yaml --out "runs/study_a-$model" \
    --figures "figures/study_a/$model" --set "model=$model" \
    --set data.cpt=../shared/data/fictional-news-ja --set data.max_cpt_docs=600 \
    --set data.sft=../shared/data/dolly-15k-ja.jsonl --set data.sft_rewrite=gozaru \
    --set data.max_sft_rows=2000 --set data.heldout=50 \
    --set data.general_text=../shared/data/aozora \
    --set data.mc=../shared/data/jcommonsenseqa/datasets_jcommonsenseqa-v1.3_valid-v1.3.json \
    --set cpt.max_length=256 --set sft.max_length=256 --set cpt.batch_size=4 --set sft.batch_size=4 \
    --set cpt.max_steps=200 --set sft.max_steps=150 \
    --set eval.max_new_tokens=48 --set eval.batch_size=16 --set eval.loss_docs=64 "$@"
fi
exec "$PY" -m layerprobe sweep experiments/study_a/sweep.yaml "$@"
