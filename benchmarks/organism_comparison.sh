#!/usr/bin/env bash
# Every selection method on the shipped organism and its shipped compressor, on the demo's 1,000 test samples
# (both prompt orders, six question types), at the keeps where the literature reports. Writes
# benchmarks/results/selectors_organism.{json,md,png} and the per-sample results beside them.
#   bash benchmarks/organism_comparison.sh            (~15 min on this 2-core CPU; LIMIT=N: the first N samples)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/comparison}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
$PY -m hf_tokcomp.organism.export --split test --n 1000 --out "$OUT/data"
$PY -m hf_tokcomp eval --model hf_tokcomp/organism/weights --compressor hf_tokcomp/organism/compressor \
  --data "$OUT/data/test.jsonl" --out "$OUT" --max-new-tokens 2 --batch-size 64 --keeps 1 0.5 0.33 0.22 0.11 \
  --methods ours attention uniform random divprune dart cdpruner fastv teacher downsample oracle ${LIMIT:+--limit $LIMIT}
for f in eval.json eval.md eval.png samples.jsonl; do
  cp "$OUT/$f" "benchmarks/results/selectors_organism$([ "$f" = samples.jsonl ] && echo _samples.jsonl || echo "${f#eval}")"
done
