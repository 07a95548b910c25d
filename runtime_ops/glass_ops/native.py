"""Finding and loading the compiled glass::gather_ffn libraries (built by runtime_ops/build.sh)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

EXECUTORCH_LIB = "libglass_et_ops.so"
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


def load_executorch_kernels() -> Path:
    """Load the ExecuTorch kernel library so `glass::gather_ffn.out` is registered; idempotent."""
    if EXECUTORCH_LIB in _loaded:
        return _loaded[EXECUTORCH_LIB]
    path = find_library(EXECUTORCH_LIB)
    if path is None:
        searched = ", ".join(str(d) for d in search_dirs())
        raise NativeLibraryMissing(f"{EXECUTORCH_LIB} not found (searched {searched}); {BUILD_HINT}")
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    _loaded[EXECUTORCH_LIB] = path
    return path


def executorch_kernels_available() -> bool:
    return find_library(EXECUTORCH_LIB) is not None
