"""Finding and loading the compiled glass op libraries (built by runtime_ops/build.sh)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

EXECUTORCH_LIB = "libglass_et_ops.so"
ONNX_RUNTIME_LIB = "libglass_ort_ops.so"  # registered per session: SessionOptions.register_custom_ops_library
BUILD_HINT = "build it with `bash runtime_ops/build.sh` (needs cmake and a C++17 compiler)"

_loaded: dict[str, Path] = {}


class NativeLibraryMissing(RuntimeError):
    pass


def search_dirs() -> list[Path]:
    """GLASS_OPS_LIB_DIR first, then the package's lib/ (where build.sh installs), then the build tree."""
    here = Path(__file__).resolve().parent
    dirs = [here / "lib", here.parent / "build"]
    env = os.environ.get("GLASS_OPS_LIB_DIR")
    return ([Path(env)] if env else []) + dirs


def find_library(name: str) -> Path | None:
    for directory in search_dirs():
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def require_library(name: str) -> Path:
    path = find_library(name)
    if path is None:
        searched = ", ".join(str(d) for d in search_dirs())
        raise NativeLibraryMissing(f"{name} not found (searched {searched}); {BUILD_HINT}")
    return path


def onnxruntime_ops_library() -> Path:
    """Path of the ONNX Runtime kernel library, for SessionOptions.register_custom_ops_library."""
    return require_library(ONNX_RUNTIME_LIB)


def load_executorch_kernels() -> Path:
    """Load the ExecuTorch kernel library so `glass::gather_ffn.out` is registered; idempotent."""
    if EXECUTORCH_LIB in _loaded:
        return _loaded[EXECUTORCH_LIB]
    path = require_library(EXECUTORCH_LIB)
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    _loaded[EXECUTORCH_LIB] = path
    return path


def quant_kernels_name() -> str:
    """The quantised kernels' SIMD variant this CPU runs ("avx512vnni", "avx2", "neon-dotprod", ...)."""
    for name in (ONNX_RUNTIME_LIB, EXECUTORCH_LIB):
        path = find_library(name)
        if path is not None:
            function = ctypes.CDLL(str(path)).glass_quant_kernels_name
            function.restype = ctypes.c_char_p
            return function().decode()
    return "none"
