#!/usr/bin/env bash
# The real-size bf16 speed cells of every family on one GPU, for a session that is lent one (the `run` tool).
# Full-depth published widths, random weights initialised ON the GPU, 1,024 visual tokens: per model and batch
# size (1, then 8) the stock model, ours at keeps 0.5 / 0.25, and FastV at the same average tokens per layer
# (not for Qwen3.5, whose linear-attention layers the FastV loop does not run). Each cell is a fresh process.
#
# Runs in priority order (every model at batch 1 first, then batch 8) within a time budget (BUDGET seconds,
# default 450, so that the whole script stays under 8 minutes): a run that would start after the budget is
# skipped and listed; a run cut by the budget keeps the cells it finished in OUT/<name>.partial.json. Results:
# benchmarks/results/speed_gpu_<device>_<model>_b<batch>.{json,md,png}, each recording the device's name.
#
#   bash benchmarks/gpu.sh            # on the GPU machine
#   PLAN=1 bash benchmarks/gpu.sh     # check every setting and print the cells, run nothing (tests/test_gpu_script.py)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
BUDGET=${BUDGET:-450}
if [ "${PLAN:-0}" = 1 ]; then
  DEVICE=${DEVICE:-plan}
else
  DEVICE=${DEVICE:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z -' 'a-z__')}
  [ -n "$DEVICE" ] || { echo "gpu.sh: no GPU found (nvidia-smi); set DEVICE=<name> to run anyway" >&2; exit 2; }
fi
COMMON=(--full-depth --visual-tokens 1024 --new-tokens 16 --repeats 3 --warmup 1 --dtype bfloat16 --device cuda
        --keeps 0.5 0.25)
PLANS=$(mktemp)
trap 'rm -f "$PLANS"' EXIT
MODELS="qwen2-vl-7b qwen3-vl-8b internvl3.5-8b qwen3.5-27b qwen3-vl-30b-a3b llava-onevision-7b"
mkdir -p "$OUT"
skipped=() failed=()
for batch in 1 8; do
  for model in $MODELS; do
    name="speed_gpu_${DEVICE}_$(echo "$model" | tr '.-' '__')_b$batch"
    if [ "${PLAN:-0}" = 1 ]; then  # checked below, all in one process
      echo "--config $model ${COMMON[*]} --batch-sizes $batch --out $OUT/$name" >> "$PLANS"
      continue
    fi
    left=$((BUDGET - SECONDS))
    if [ "$left" -le 20 ]; then skipped+=("$name"); continue; fi
    echo "== $name (${left}s of the budget left)" >&2
    if ! HF_HUB_OFFLINE=1 timeout "${left}" "$PY" benchmarks/speed.py --config "$model" "${COMMON[@]}" \
        --batch-sizes "$batch" --out "$OUT/$name"; then
      failed+=("$name")
    fi
  done
done
if [ "${PLAN:-0}" = 1 ]; then "$PY" benchmarks/speed.py --plan-lines "$PLANS"; exit $?; fi
[ ${#skipped[@]} -eq 0 ] || echo "skipped (budget of ${BUDGET}s spent): ${skipped[*]}" >&2
[ ${#failed[@]} -eq 0 ] || { echo "failed or cut by the budget: ${failed[*]}" >&2; exit 1; }
