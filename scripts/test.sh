#!/usr/bin/env bash
# Set up (idempotent), build the native op libraries, run the Python suite, then the JVM engine
# of the Android demo against the golden data the Python suite wrote.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash runtime_ops/build.sh
.venv/bin/python -m pytest -q "$@"
mvn -B -ntp -f android_demo/core/pom.xml test
