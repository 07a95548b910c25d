#!/usr/bin/env bash
# Cross-build the compute cores and their fuzz drivers for arm64 (what phones run) with Debian's
# aarch64 g++, into runtime_ops/build-arm64; qemu-user runs them on this host with the cross sysroot:
#   bash runtime_ops/build_arm64.sh && qemu-aarch64-static -L /usr/aarch64-linux-gnu runtime_ops/build-arm64/quant_ffn_fuzz 200
# Needs the Debian packages g++-aarch64-linux-gnu and qemu-user-static (scripts/test.sh installs them).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
CMAKE=${CMAKE:-$(dirname "$PY")/cmake}
[ -x "$CMAKE" ] || CMAKE=cmake
"$CMAKE" -S . -B build-arm64 -DGLASS_KERNELS_ONLY=ON -DGLASS_NATIVE_ARCH=OFF \
  -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ >/dev/null
"$CMAKE" --build build-arm64 -j"$(nproc)" >/dev/null
file build-arm64/quant_ffn_fuzz | grep -q "ARM aarch64"
echo "built $(ls build-arm64/*_fuzz | xargs -n1 basename | tr '\n' ' ')for arm64"
