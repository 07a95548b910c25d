#!/usr/bin/env bash
# Create .venv and install glass-export with its pinned dependencies (idempotent). With
# GLASS_CROSS_TOOLS=1 also the Debian packages for the arm64 kernel tests (cross g++ and qemu-user).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test,build]"
if [ "${GLASS_CROSS_TOOLS:-0}" = 1 ] && ! { command -v aarch64-linux-gnu-g++ && command -v qemu-aarch64-static; } >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y -qq g++-aarch64-linux-gnu qemu-user-static >/dev/null 2>&1 \
    || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq g++-aarch64-linux-gnu qemu-user-static >/dev/null; }
fi
echo "glass-export installed in .venv ($(.venv/bin/glass-export --version))"
