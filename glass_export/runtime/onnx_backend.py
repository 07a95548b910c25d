"""ONNX Runtime backend: prefill.onnx then decode.onnx over one KV cache.

The cache is one buffer [1, kv_heads, max_seq_len, head_dim] per layer and kind, bound as both the
past input and the present output of each graph (IOBinding), so GroupQueryAttention writes the new
positions in place, as ONNX Runtime GenAI does: no copy of the cache per step.
"""

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
            if path is not None and not native.missing_cpu_features():
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
        elif manifest.runtime.get("custom_ops"):
            self.description = "onnx, function fallback (stock onnxruntime ops)"
        else:
            self.description = "onnx, stock onnxruntime ops (no glass op in the graphs)"
        kv = manifest.kv
        shape = (1, kv.num_kv_heads, manifest.max_seq_len, kv.head_dim)
        self._cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in kv.past_names]
        self._bindings = {}
        for role, session in (("prefill", self.prefill_session), ("decode", self.decode_session)):
            binding = session.io_binding()
            for past, present, buffer in zip(kv.past_names, kv.present_names, self._cache):
                binding.bind_ortvalue_input(past, buffer)
                binding.bind_ortvalue_output(present, buffer)
            self._bindings[role] = binding
        self._outputs = {"prefill": ("logits", "glass_local_scores", "glass_indices"), "decode": ("logits",)}

    def _run(self, role: str, inputs: dict) -> list[np.ndarray]:
        """Run one graph with the cache bound in place; returns its other outputs, in binding order."""
        binding = self._bindings[role]
        for name, value in inputs.items():
            binding.bind_cpu_input(name, value)
        for name in self._outputs[role]:  # bound afresh: their shapes change from call to call
            binding.bind_output(name)
        session = self.prefill_session if role == "prefill" else self.decode_session
        session.run_with_iobinding(binding)
        return [value.numpy() for value in binding.get_outputs()[len(self._cache):]]

    def _prefill(self, ids: list[int]) -> PrefillResult:
        logits, local, indices = self._run("prefill", {"input_ids": np.array([ids], dtype=np.int64)})
        return PrefillResult(logits[0], indices, local)

    def _decode(self, token: int, position: int, indices: np.ndarray) -> np.ndarray:
        (logits,) = self._run("decode", {"input_ids": np.array([[token]], dtype=np.int64),
                                         "position_ids": np.array([[position]], dtype=np.int64),
                                         "glass_indices": indices})
        return logits[0, -1]

    def close(self) -> None:
        self.prefill_session = self.decode_session = None
        self._bindings, self._cache = {}, []
