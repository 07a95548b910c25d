#!/usr/bin/env bash
# Build the glass-export wheel (with its native op libraries), install it into a fresh virtual
# environment outside the checkout, and export, run and verify a tiny model on both runtimes from
# there: what a user of `pip install glass-export-*.whl` gets.
#   bash scripts/wheel_check.sh            (after scripts/setup.sh; scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

rm -rf build/wheel
"$PY" -m pip wheel . --no-build-isolation --no-deps --quiet -w build/wheel
WHEEL=$(ls build/wheel/glass_export-*.whl)
"$PY" - "$WHEEL" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = [n for n in ("glass_ops/lib/libglass_et_ops.so", "glass_ops/lib/libglass_ort_ops.so") if n not in names]
sys.exit(f"{sys.argv[1]} lacks {', '.join(missing)}" if missing else 0)
PY

"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --upgrade pip
"$WORK/venv/bin/python" -m pip install --quiet "$WHEEL"

cd "$WORK"  # nothing of the checkout on the path from here on
GE="$WORK/venv/bin/glass-export"
"$WORK/venv/bin/python" - <<'PY'
import glass_ops, glass_export
from pathlib import Path
for module in (glass_ops, glass_export):
    assert "site-packages" in module.__file__, module.__file__
print("imports from", Path(glass_ops.__file__).parent.parent)
PY
"$GE" example --out ex
for target in onnx executorch; do
  "$GE" export --model ex/model --method griffin --density 0.5 --quant int4 --target "$target" --max-seq-len 64 \
    --out "art-$target"
  "$GE" run --artifact "art-$target" --prompt "Write a short poem about the sea." --max-new-tokens 8 2> "run-$target.txt"
  grep -q "native kernels" "run-$target.txt" || { cat "run-$target.txt"; echo "the $target run did not use the native kernels"; exit 1; }
  "$GE" verify --artifact "art-$target" --model ex/model --steps 8 --json > "verify-$target.json"
done
echo "wheel check: $(basename "$WHEEL") installed in a fresh venv ran and verified ONNX and ExecuTorch int4 artifacts on the native kernels"
