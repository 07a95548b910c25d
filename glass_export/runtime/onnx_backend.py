"""ONNX Runtime backend: prefill.onnx then decode.onnx, the KV cache passed between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import GlassExportError
from .backend import Backend, PrefillResult


class OnnxBackend(Backend):
    def __init__(self, directory: Path, manifest: dict, use_native: bool = True, threads: int | None = None):
        import onnxruntime as ort

        from glass_ops import native

        self.directory = directory
        self.manifest = manifest
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.native_library = None
        library = manifest["onnx"].get("native_library")
        if use_native and library:
            path = native.find_library(library)
            if path is not None:
                options.register_custom_ops_library(str(path))
                self.native_library = path
        try:
            self.prefill_session = ort.InferenceSession(
                str(directory / manifest["files"]["prefill"]), options, providers=["CPUExecutionProvider"]
            )
            self.decode_session = ort.InferenceSession(
                str(directory / manifest["files"]["decode"]), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GlassExportError(f"onnxruntime cannot load {directory}: {exc}", "re-export the artifact") from exc
        kv = manifest["kv_cache"]
        self.past_names, self.present_names = kv["past_names"], kv["present_names"]

    @property
    def op_implementation(self) -> str:
        return f"native ({self.native_library.name})" if self.native_library else "ONNX function fallback"

    def prefill(self, ids: list[int]) -> PrefillResult:
        outputs = self.prefill_session.run(None, {"input_ids": np.array([ids], dtype=np.int64)})
        logits, local, indices, *present = outputs
        return PrefillResult(logits[0], indices, local, present)

    def decode(self, token: int, position: int, indices: np.ndarray, state):
        feeds = {
            "input_ids": np.array([[token]], dtype=np.int64),
            "position_ids": np.array([[position]], dtype=np.int64),
            "glass_indices": indices,
            **dict(zip(self.past_names, state)),
        }
        logits, *present = self.decode_session.run(None, feeds)
        return logits[0, -1], present
