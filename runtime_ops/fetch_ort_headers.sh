#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers (the onnxruntime wheel has none) from Debian's
# libonnxruntime-dev package and unpack only include/onnxruntime into third_party/.
# Prints the include directory. The C API is versioned: a kernel built against these
# (API 21, ORT 1.21) loads into any newer runtime, e.g. the pinned onnxruntime 1.32.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=1.21.0+dfsg-1
SHA256=14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08
URL="https://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_${VERSION}_amd64.deb"
DEST=third_party/onnxruntime-${VERSION%%+*}
if [ ! -f "$DEST/include/onnxruntime_c_api.h" ]; then
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  curl -fsSL --retry 3 -o "$TMP/ort.deb" "$URL" >&2
  echo "$SHA256  $TMP/ort.deb" | sha256sum -c --quiet - >&2
  (cd "$TMP" && ar x ort.deb && tar -xf data.tar.* ./usr/include/onnxruntime)
  mkdir -p "$DEST"
  rm -rf "$DEST/include.tmp" && mv "$TMP/usr/include/onnxruntime" "$DEST/include.tmp" && mv "$DEST/include.tmp" "$DEST/include"
fi
echo "$(pwd)/$DEST/include"
