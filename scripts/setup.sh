#!/usr/bin/env bash
# Create .venv and install glass-export with its pinned dependencies and its native op libraries
# (idempotent; the libraries land in runtime_ops/glass_ops/lib). With GLASS_CROSS_TOOLS=1 also the
# Debian packages for the arm64 kernel tests (cross g++ and qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The package builds its native op libraries with CMake against the executorch wheel (pyproject.toml):
# install what that build needs first, then the package itself, editable, without an isolated build
# environment (which would download executorch a second time).
.venv/bin/python -m pip install --quiet "scikit-build-core==0.11.6" "cmake==4.4.5" "executorch==1.5.1"
.venv/bin/python -m pip install --quiet --no-build-isolation -e ".[test,build]"
if [ "${GLASS_CROSS_TOOLS:-0}" = 1 ] && ! { command -v aarch64-linux-gnu-g++ && command -v qemu-aarch64-static; } >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y -qq g++-aarch64-linux-gnu qemu-user-static >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq g++-aarch64-linux-gnu qemu-user-static >/dev/null; }
fi
echo "glass-export installed in .venv ($(.venv/bin/glass-export --version))"
