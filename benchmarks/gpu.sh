#!/usr/bin/env bash
# The real-size bf16 speed cells on one GPU, for a session that is lent one (the `run` tool): full-depth
# Qwen2-VL-7B and LLaVA-OneVision-7B widths, random weights initialised on the GPU, stock vs ours vs FastV (at
# equal average tokens per layer) at keeps 0.5 / 0.22 / 0.11, 1,024 visual tokens, Qwen at batch 1 and 8,
# LLaVA at batch 1: 19 cells, each in a fresh process, meant to fit in 8 minutes on an H200. Each result records
# the device name (`device`). PLAN=1 checks every setting and prints the cells without running anything
# (tests/test_gpu_script.py), so a lent GPU's minutes are not lost to a bad argument.
#
#   bash benchmarks/gpu.sh          # on the GPU machine: benchmarks/results/speed_gpu_{qwen2_vl_7b,llava_onevision_7b}.*
#   PLAN=1 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results}
COMMON=(--full-depth --visual-tokens 1024 --new-tokens 16 --repeats 3 --warmup 1 --dtype bfloat16 --device cuda)
[ "${PLAN:-0}" = 1 ] && COMMON+=(--plan)
mkdir -p "$OUT"
HF_HUB_OFFLINE=1 "$PY" benchmarks/speed.py --config qwen2-vl-7b "${COMMON[@]}" --batch-sizes 1 8 \
  --batch8-visual-tokens 1024 --keeps 0.5 0.22 0.11 --out "$OUT/speed_gpu_qwen2_vl_7b"
HF_HUB_OFFLINE=1 "$PY" benchmarks/speed.py --config llava-onevision-7b "${COMMON[@]}" --batch-sizes 1 \
  --keeps 0.5 0.11 --out "$OUT/speed_gpu_llava_onevision_7b"
