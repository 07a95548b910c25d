#!/usr/bin/env bash
# Set up, then run the main job on the built-in example: a tiny offline model,
# calibration of its GLASS priors, and sparse generation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash runtime_ops/build.sh
GE=.venv/bin/glass-export
OUT=${OUT:-example}
$GE example --out "$OUT" --force
$GE calibrate --model "$OUT/model" --data "$OUT/corpus.txt" --seq-len 64 --out "$OUT/priors.safetensors"
$GE inspect "$OUT/priors.safetensors"
$GE generate --model "$OUT/model" --priors "$OUT/priors.safetensors" --method i-glass --density 0.5 --lambda 0.5 \
  --prompt "Write a short poem about the sea." --max-new-tokens 32
$GE export --model "$OUT/model" --priors "$OUT/priors.safetensors" --method i-glass --density 0.5 --lambda 0.5 \
  --target onnx --max-seq-len 128 --out "$OUT/onnx-i-glass" --force
$GE run --artifact "$OUT/onnx-i-glass" --prompt "Write a short poem about the sea." --max-new-tokens 32
$GE verify --artifact "$OUT/onnx-i-glass" --model "$OUT/model" --steps 16
$GE export --model "$OUT/model" --priors "$OUT/priors.safetensors" --method i-glass --density 0.5 --lambda 0.5 \
  --target executorch --max-seq-len 128 --out "$OUT/pte-i-glass" --force
$GE run --artifact "$OUT/pte-i-glass" --prompt "Write a short poem about the sea." --max-new-tokens 32
$GE verify --artifact "$OUT/pte-i-glass" --model "$OUT/model" --steps 16
