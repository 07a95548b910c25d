#!/usr/bin/env bash
# Set up (idempotent), build the native op libraries, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash runtime_ops/build.sh
.venv/bin/python -m pytest -q "$@"
