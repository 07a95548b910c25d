"""Finding and loading native libraries: the compiled glass ops (built by runtime_ops/build.sh) and
ExecuTorch's own LLM kernels."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

EXECUTORCH_LIB = "libglass_et_ops.so"
ONNX_RUNTIME_LIB = "libglass_ort_ops.so"  # registered per session: SessionOptions.register_custom_ops_library
BUILD_HINT = ("reinstall glass-export (pip install builds them), or build them with `bash runtime_ops/build.sh` "
              "(needs cmake and a C++17 compiler)")

_loaded: dict[str, Path] = {}


class NativeLibraryMissing(RuntimeError):
    pass


def search_dirs() -> list[Path]:
    """GLASS_OPS_LIB_DIR first, then the package's lib/ (where pip install and build.sh put them)."""
    env = os.environ.get("GLASS_OPS_LIB_DIR")
    return ([Path(env)] if env else []) + [Path(__file__).resolve().parent / "lib"]


def find_library(name: str) -> Path | None:
    for directory in search_dirs():
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


PORTABLE_X86_FLAGS = ("avx2", "fma", "bmi2")  # x86-64-v3: what wheels' libraries are built for (CMakeLists.txt)


def require_library(name: str) -> Path:
    path = find_library(name)
    if path is None:
        searched = ", ".join(str(d) for d in search_dirs())
        raise NativeLibraryMissing(f"{name} not found (searched {searched}); {BUILD_HINT}")
    missing = missing_cpu_features()
    if missing:
        raise NativeLibraryMissing(f"{path} needs a CPU with {', '.join(PORTABLE_X86_FLAGS)} (x86-64-v3), this one "
                                   f"lacks {', '.join(missing)}; {BUILD_HINT} on this machine")
    return path


def missing_cpu_features() -> list[str]:
    """The x86-64-v3 features this x86-64 Linux CPU lacks (none elsewhere, or where cpuinfo is unreadable)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return [flag for flag in PORTABLE_X86_FLAGS if flag not in flags]


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


@contextlib.contextmanager
def native_log_silenced(descriptors: tuple[int, ...] = (2,)):
    """Send the process's stderr (file descriptor 2; or the descriptors given) to /dev/null for the
    block, unless the user asked for --verbose (GLASS_VERBOSE=1)."""
    if os.environ.get("GLASS_VERBOSE") == "1":
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in descriptors]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in descriptors:
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in zip(descriptors, saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


def load_llm_custom_ops() -> None:
    """ExecuTorch's LLM ops (llama::custom_sdpa, llama::update_cache): the torch ops for export and the
    ExecuTorch kernels for the runtime, registered by one library."""
    with native_log_silenced():  # the library logs its CPU probing to stderr
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
