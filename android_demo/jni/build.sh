#!/usr/bin/env bash
# Builds the ExecuTorch JNI bridge for the host (android_demo/jni/build/libglass_et_jni.so) against the
# executorch wheel in .venv and the glass kernels of runtime_ops (bash runtime_ops/build.sh first), and
# writes build/host.properties for the JVM tests: where the bridge is, and what to open before it.
# With GLASS_JNI_ARM64=1 also compiles glass_et_jni.cpp for arm64 with Debian's aarch64 g++ (a compile
# check: no arm64 ExecuTorch to link against here).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
PY=$ROOT/.venv/bin/python
CMAKE=$ROOT/.venv/bin/cmake   # the cmake wheel (>= 3.28, which the executorch CMake config needs)
[ -x "$CMAKE" ] || CMAKE=cmake
ET=$("$PY" -c "import executorch; print(list(executorch.__path__)[0])")
OPS=$ROOT/runtime_ops/glass_ops/lib/libglass_et_ops.so
[ -f "$OPS" ] || { echo "missing $OPS: run bash runtime_ops/build.sh (or scripts/setup.sh) first" >&2; exit 1; }
mkdir -p build
"$CMAKE" -S . -B build -DEXECUTORCH_ROOT="$ET" -DGLASS_ET_OPS="$OPS" >build/cmake.log 2>&1 \
  || { cat build/cmake.log >&2; exit 1; }
"$CMAKE" --build build -j2 >build/make.log 2>&1 || { cat build/make.log >&2; exit 1; }
# The wheel ships ExecuTorch's LLM kernels (llama::custom_sdpa, llama::update_cache) only in its
# PyTorch-bound custom-ops library, which needs libpython's symbols: the host tests open both, globally,
# before the program (on a phone the ExecuTorch build links them into this library instead).
LIBPYTHON=$("$PY" -c "import sysconfig, os; print(os.path.join(sysconfig.get_config_var('LIBDIR'), sysconfig.get_config_var('INSTSONAME')))")
[ -f "$LIBPYTHON" ] || { echo "no shared libpython ($LIBPYTHON): the host ExecuTorch tests need a Python built with --enable-shared" >&2; exit 1; }
LLM_OPS=$ET/extension/llm/custom_ops/libcustom_ops_aot_lib.so
[ -f "$LLM_OPS" ] || { echo "missing $LLM_OPS in the executorch wheel" >&2; exit 1; }
cat > build/host.properties <<PROPS
glass.et.jni=$PWD/build/libglass_et_jni.so
glass.et.preload=$LIBPYTHON:$LLM_OPS
PROPS
echo "built $PWD/build/libglass_et_jni.so"
if [ "${GLASS_JNI_ARM64:-0}" = 1 ]; then
  command -v aarch64-linux-gnu-g++ >/dev/null || { echo "no aarch64-linux-gnu-g++ (GLASS_CROSS_TOOLS=1 bash scripts/setup.sh)" >&2; exit 1; }
  JDK_INC=$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")/include
  "$CMAKE" -S . -B build-arm64 -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DGLASS_JNI_COMPILE_ONLY=ON -DEXECUTORCH_ROOT="$ET" \
    -DJNI_INCLUDE="$JDK_INC" >/dev/null
  "$CMAKE" --build build-arm64 >/dev/null
  OBJ=build-arm64/CMakeFiles/glass_et_jni_check.dir/glass_et_jni.cpp.o
  MACHINE=$(od -An -tx1 -j18 -N2 "$OBJ" | tr -d ' ')   # ELF e_machine: b700 = AArch64
  [ "$MACHINE" = b700 ] || { echo "$OBJ is not an AArch64 object (e_machine $MACHINE)" >&2; exit 1; }
  echo "compiled glass_et_jni.cpp for arm64 (compile check only: $OBJ, AArch64)"
fi
