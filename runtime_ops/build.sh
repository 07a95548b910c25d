#!/usr/bin/env bash
# Build the native glass::gather_ffn libraries and install them into runtime_ops/glass_ops/lib.
#   bash runtime_ops/build.sh            # release build
#   GLASS_ASAN=1 bash runtime_ops/build.sh   # AddressSanitizer build into runtime_ops/build-asan
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
CMAKE=${CMAKE:-$(dirname "$PY")/cmake}
[ -x "$CMAKE" ] || CMAKE=cmake
ET_ROOT=$("$PY" -c 'import executorch; print(list(executorch.__path__)[0])')
# ONNX Runtime headers: ORT_INCLUDE_DIR if given, else fetched once by CMake (GLASS_NO_ORT=1 skips the ORT kernel).
NO_ORT=$([ "${GLASS_NO_ORT:-0}" = 1 ] && echo ON || echo OFF)
if [ "${GLASS_ASAN:-0}" = 1 ]; then BUILD=build-asan; ASAN=ON; else BUILD=build; ASAN=OFF; fi
"$CMAKE" -S . -B "$BUILD" -DEXECUTORCH_ROOT="$ET_ROOT" -DGLASS_ASAN=$ASAN -DGLASS_NO_ORT=$NO_ORT \
  ${ORT_INCLUDE_DIR:+-DORT_INCLUDE_DIR=$ORT_INCLUDE_DIR} >/dev/null
"$CMAKE" --build "$BUILD" -j"$(nproc)"
if [ "$ASAN" = OFF ]; then
  mkdir -p glass_ops/lib
  cp "$BUILD"/libglass_et_ops.so glass_ops/lib/
  if [ -f "$BUILD"/libglass_ort_ops.so ]; then cp "$BUILD"/libglass_ort_ops.so glass_ops/lib/; else rm -f glass_ops/lib/libglass_ort_ops.so; fi
  echo "installed $(ls glass_ops/lib)"
fi
