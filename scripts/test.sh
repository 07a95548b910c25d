#!/usr/bin/env bash
# Set up (idempotent; it builds the native op libraries), run the Python suite, the Android demo's JVM
# modules against the golden data the Python suite wrote (core: the engine on ONNX Runtime and on the
# ExecuTorch JNI bridge; app: the screen under Robolectric), and the wheel check (the built wheel
# installed in a fresh venv, outside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
GLASS_CROSS_TOOLS=1 bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
status=0
bash scripts/wheel_check.sh || status=$?
# The ExecuTorch JNI bridge for the host (and its arm64 compile check), then both JVM modules; test
# failures do not stop Maven (app runs even when core fails), the summary below decides.
GLASS_JNI_ARM64=1 bash android_demo/jni/build.sh || status=$?
rm -rf android_demo/core/target/surefire-reports android_demo/app/target/surefire-reports
mvn -B -ntp -f android_demo/pom.xml -Dmaven.test.failure.ignore=true test || status=$?
# One summary line per JVM module from its JUnit reports, whatever Maven's verdict.
.venv/bin/python - <<'PY' || status=$?
import glob, sys, xml.etree.ElementTree as ET
failed = False
for module, what in (("core", "JVM engine"), ("app", "Robolectric")):
    suites = [ET.parse(p).getroot() for p in glob.glob(f"android_demo/{module}/target/surefire-reports/TEST-*.xml")]
    run = sum(int(s.get("tests", 0)) for s in suites)
    bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    note = "" if suites else " (no test reports: the module did not build)"
    print(f"android_demo {module} ({what}): {run - bad - skipped} passed, {bad} failed, {skipped} skipped{note}")
    failed |= bad > 0 or not suites
sys.exit(1 if failed else 0)
PY
exit $status
