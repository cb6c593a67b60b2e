#!/usr/bin/env bash
# The GPU check (≤ 10 minutes on one GPU): the CUDA tests (Adapt-Accel under FSDP included), the memory plan's
# predictions for this GPU, the studio timing on the default model, and the scale benchmark on the default model
# and the largest model present, all on CUDA (its measured peaks sit beside the plan's predictions). JSON results go to $OUT
# (default runs/gpu). Run it where a GPU is lent:   OUT=runs/gpu bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
"$PY" - <<'PY'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device here")
print("cuda:", torch.cuda.get_device_name(0), torch.version.cuda, "torch", torch.__version__)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" || true
echo "[gpu] CUDA tests (with Adapt-Accel under accelerate FSDP, pruner/resources/accelerate/fsdp.yaml)"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_devices.py tests/test_accel_fsdp.py \
  --junitxml "$OUT/cuda_tests.xml"
echo "[gpu] memory plan for this GPU (8 B-class models and the shipped ones), before any load"
for m in default qwen2.5-0.5b qwen2.5-1.5b llama-3.1-8b qwen2.5-7b; do
  "$PY" -m pruner plan-memory --model "$m" --dtype bfloat16 --device cuda:0 --json > "$OUT/plan_$m.json" || true
done
echo "[gpu] studio timing on the default model"
"$PY" benchmarks/studio_timing.py --steps 2 --device cuda --out "$OUT/studio_timing_cuda.json"
models=default
for m in gemma3-270m qwen2.5-0.5b; do
  if "$PY" -c "import sys; from pruner.io.shipped import is_fetched; sys.exit(0 if is_fetched('$m') else 1)"; then
    models="$models,$m"
  fi
done
echo "[gpu] scale benchmark: $models"
"$PY" benchmarks/scale.py --device cuda --dtype bfloat16 --models "$models" --out "$OUT/scale_cuda.json"
echo "[gpu] done: $OUT"
