"""ONNX Runtime backend: prefill.onnx then decode.onnx, the KV cache passed between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Manifest
from ..errors import GlassExportError
from ..generation import Backend, PrefillResult


class OnnxBackend(Backend):
    def __init__(self, directory: Path, manifest: Manifest, use_native: bool = True, threads: int | None = None):
        import onnxruntime as ort

        from glass_ops import native

        super().__init__()
        self.directory, self.manifest = directory, manifest
        self.max_seq_len = manifest.max_seq_len
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.native_library = None
        if use_native and manifest.native_library:
            path = native.find_library(manifest.native_library)
            if path is not None:
                options.register_custom_ops_library(str(path))
                self.native_library = path
        try:
            self.prefill_session = ort.InferenceSession(str(directory / manifest.files["prefill"]), options,
                                                        providers=["CPUExecutionProvider"])
            self.decode_session = ort.InferenceSession(str(directory / manifest.files["decode"]), options,
                                                       providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GlassExportError(f"onnxruntime cannot load {directory}: {exc}", "re-export the artifact") from exc
        if self.native_library is not None:
            self.description = f"onnx, native kernels ({self.native_library.name}, {native.quant_kernels_name()})"
        else:
            self.description = "onnx, function fallback (stock onnxruntime ops)"
        self.past_names, self.present_names = manifest.kv.past_names, manifest.kv.present_names
        self._past: list[np.ndarray] = []

    def _prefill(self, ids: list[int]) -> PrefillResult:
        logits, local, indices, *present = self.prefill_session.run(None, {"input_ids": np.array([ids], dtype=np.int64)})
        self._past = present
        return PrefillResult(logits[0], indices, local)

    def _decode(self, token: int, position: int, indices: np.ndarray) -> np.ndarray:
        feeds = {
            "input_ids": np.array([[token]], dtype=np.int64),
            "position_ids": np.array([[position]], dtype=np.int64),
            "glass_indices": indices,
            **dict(zip(self.past_names, self._past)),
        }
        logits, *self._past = self.decode_session.run(None, feeds)
        return logits[0, -1]

    def close(self) -> None:
        self.prefill_session = self.decode_session = None
        self._past = []
