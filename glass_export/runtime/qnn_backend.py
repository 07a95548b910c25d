"""ONNX Runtime with the QNN execution provider: the prefill graph on the CPU, the static QDQ decode graph
on the Qualcomm HTP (on x86-64 Linux, onnxruntime-qnn's libQnnHtp.so simulates it: right answers, no
device speed).

The KV cache is one host array [1, kv_heads, max_seq_len, head_dim] per layer and kind. The prefill
writes it in place (its IOBinding is over the arrays' own memory); each decode step reads it whole
(a static input, as the HTP needs) and returns only its new key and value, which are written at the
step's position.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..artifact import KVLayout, Manifest
from ..errors import GlassExportError
from ..generation import Backend, PrefillResult

QNN_EP = "QNNExecutionProvider"
QNN_REQUIREMENT = "onnxruntime-qnn==2.7.0"
HTP_ARCHS = ("68", "69", "73", "75", "79", "81")  # the QNN EP's htp_arch values (Hexagon HTP versions)
_registered = False


def _qnn_module():
    import onnxruntime as ort

    global _registered
    try:
        import onnxruntime_qnn
    except ImportError as exc:
        raise GlassExportError("the QNN execution provider (onnxruntime-qnn) is not installed",
                               f'pip install "{QNN_REQUIREMENT}" (or glass-export[npu])') from exc
    if not _registered:
        ort.register_execution_provider_library(QNN_EP, onnxruntime_qnn.get_library_path())
        _registered = True
    return onnxruntime_qnn


def qnn_available() -> bool:
    try:
        _qnn_module()
    except GlassExportError:
        return False
    return True


def session_options(threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options


def htp_session(path: Path, profile_prefix: str | None = None, config=None, htp_arch: int | None = None):
    """A session whose nodes all run on the QNN HTP backend: CPU fallback is disabled, so creating it
    fails unless every node does. config: session config entries (e.g. ep.context_enable to write a
    context binary); htp_arch: the HTP version to compile for (None: the backend's default)."""
    import onnxruntime as ort

    from glass_ops.native import native_log_silenced

    qnn = _qnn_module()
    options = session_options()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    devices = [d for d in ort.get_ep_devices() if d.ep_name == QNN_EP]
    provider = {"backend_path": qnn.get_qnn_htp_path(), **({"htp_arch": str(htp_arch)} if htp_arch else {})}
    options.add_provider_for_devices(devices, provider)
    with native_log_silenced((1, 2)):  # the QNN libraries print their thread-local set-up to stdout
        return ort.InferenceSession(str(path), options)


def node_partition(session, feeds: dict) -> dict:
    """Where the session's nodes ran, read from one profiled run: {provider: nodes that ran there}, a
    QNN partition counting as one (fused) node."""
    session.run(None, feeds)
    profile = Path(session.end_profiling())
    try:
        events = json.loads(profile.read_text())
    finally:
        profile.unlink(missing_ok=True)
    nodes = {(e["args"]["provider"], e["name"]) for e in events
             if e.get("cat") == "Node" and "provider" in e.get("args", {})}
    return dict(Counter(provider for provider, _ in nodes))


class StaticKVCache:
    """The host KV cache and the decode graph's static feeds (module docstring)."""

    def __init__(self, kv: KVLayout, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.past_names, self.present_names = kv.past_names, kv.present_names
        self.arrays = [np.zeros((1, kv.num_kv_heads, max_seq_len, kv.head_dim), np.float32) for _ in self.past_names]

    def clear(self) -> None:
        for array in self.arrays:
            array.fill(0.0)

    def decode_feeds(self, token: int, position: int, indices: np.ndarray) -> dict:
        mask = np.zeros((1, 1, 1, self.max_seq_len + 1), np.float32)
        mask[..., :position] = 1.0
        mask[..., self.max_seq_len] = 1.0  # this step's own key, appended after the cache
        return {"input_ids": np.array([[token]], dtype=np.int64), "position_ids": np.array([[position]], dtype=np.int64),
                "attention_mask": mask, "glass_indices": indices, **dict(zip(self.past_names, self.arrays))}

    def write(self, position: int, presents: list[np.ndarray]) -> None:
        for array, new in zip(self.arrays, presents):
            array[:, :, position] = new[:, :, 0]


class QnnBackend(Backend):
    """The two graphs over one StaticKVCache; the decode session is given (the HTP's, or the float graph's
    on the CPU for export's calibration)."""

    def __init__(self, prefill_path: Path, decode_session, kv: KVLayout, max_seq_len: int, threads: int | None = None,
                 description: str = "qnn: prefill on the CPU, decode on the QNN HTP backend"):
        import onnxruntime as ort

        super().__init__()
        self.max_seq_len = max_seq_len
        self.cache = StaticKVCache(kv, max_seq_len)
        self.prefill_session = ort.InferenceSession(str(prefill_path), session_options(threads),
                                                    providers=["CPUExecutionProvider"])
        self.decode_session = decode_session
        self.description = description
        self._binding = self.prefill_session.io_binding()
        for past, present, array in zip(self.cache.past_names, self.cache.present_names, self.cache.arrays):
            buffer = ort.OrtValue.ortvalue_from_numpy(array)  # shares the array's memory
            self._binding.bind_ortvalue_input(past, buffer)
            self._binding.bind_ortvalue_output(present, buffer)
        self.on_decode = None  # called with each decode step's feeds (export's calibration keeps them)

    @classmethod
    def open(cls, directory: Path, manifest: Manifest, threads: int | None = None) -> "QnnBackend":
        try:
            # the precompiled context binary when the export made one (--htp-arch), else the QDQ graph
            compiled = manifest.files.get("decode_context")
            decode = htp_session(directory / (compiled or manifest.files["decode"]),
                                 htp_arch=manifest.runtime.get("htp_arch"))
            backend = cls(directory / manifest.files["prefill"], decode, manifest.kv, manifest.max_seq_len, threads)
        except GlassExportError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GlassExportError(f"onnxruntime cannot load {directory}: {exc}", "re-export the artifact") from exc
        backend.directory, backend.manifest = directory, manifest
        if compiled:
            backend.description += f" (context binary for HTP v{manifest.runtime.get('htp_arch')})"
        return backend

    def _prefill(self, ids: list[int]) -> PrefillResult:
        self.cache.clear()
        self._binding.bind_cpu_input("input_ids", np.array([ids], dtype=np.int64))
        for name in ("logits", "glass_local_scores", "glass_indices"):
            self._binding.bind_output(name)
        self.prefill_session.run_with_iobinding(self._binding)
        logits, local, indices = [v.numpy() for v in self._binding.get_outputs()[len(self.cache.arrays):]]
        return PrefillResult(logits[0], indices, local)

    def _decode(self, token: int, position: int, indices: np.ndarray) -> np.ndarray:
        feeds = self.cache.decode_feeds(token, position, indices)
        if self.on_decode is not None:
            self.on_decode(feeds)
        logits, *presents = self.decode_session.run(None, feeds)
        self.cache.write(position, presents)
        return logits[0, -1]

    def close(self) -> None:
        self.prefill_session = self.decode_session = None
        self._binding = None
