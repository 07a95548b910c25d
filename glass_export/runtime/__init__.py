"""Running exported artifacts: a Backend for each target (glass_export.generation has the loop)."""

from __future__ import annotations

from pathlib import Path

from ..artifact import Manifest, load_manifest
from ..errors import GlassExportError
from ..generation import Backend


def open_artifact(directory: str | Path, use_native: bool = True, threads: int | None = None,
                  hash_files: bool = False) -> Backend:
    """Load an artifact with the runtime its manifest names.

    use_native: register the native glass kernels (ONNX: False runs the function fallbacks;
    ExecuTorch has no fallback and refuses False). threads: the runtime's intra-op threads.
    hash_files: check every file's sha256 against the manifest, not only its size.
    """
    directory = Path(directory)
    manifest = load_manifest(directory, hash_files=hash_files)
    if manifest.target == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend(directory, manifest, use_native=use_native, threads=threads)
    if manifest.target == "qnn":
        from .qnn_backend import QnnBackend

        return QnnBackend.open(directory, manifest, threads=threads)
    from .executorch_backend import ExecuTorchBackend

    return ExecuTorchBackend(directory, manifest, use_native=use_native, threads=threads)


def artifact_tokenizer(directory: Path, manifest: Manifest):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # tokenizers raises its own exception types for damaged files
        raise GlassExportError(f"artifact {directory} has no usable tokenizer ({type(exc).__name__}: {exc})",
                               "re-export the artifact") from exc


__all__ = ["Backend", "artifact_tokenizer", "open_artifact"]
