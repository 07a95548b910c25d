#!/usr/bin/env bash
# Set up (idempotent; it builds the native op libraries), run the Python suite, the JVM engine of the
# Android demo against the golden data the Python suite wrote, and the wheel check (the built wheel
# installed in a fresh venv, outside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
GLASS_CROSS_TOOLS=1 bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
status=0
bash scripts/wheel_check.sh || status=$?
mvn -B -ntp -f android_demo/core/pom.xml test || status=$?
# One summary line from the JUnit reports, whatever Maven's verdict.
.venv/bin/python - <<'PY'
import glob, xml.etree.ElementTree as ET
suites = [ET.parse(p).getroot() for p in glob.glob("android_demo/core/target/surefire-reports/TEST-*.xml")]
run = sum(int(s.get("tests", 0)) for s in suites)
bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(f"android_demo core (JVM): {run - bad - skipped} passed, {bad} failed, {skipped} skipped")
PY
exit $status
