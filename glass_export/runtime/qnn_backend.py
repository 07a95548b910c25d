"""ONNX Runtime with the QNN execution provider: the static QDQ prefill and decode graphs on the Qualcomm
HTP, the selection on the CPU (on x86-64 Linux, onnxruntime-qnn's libQnnHtp.so simulates the HTP: right
answers, no device speed).

A prompt runs in the smallest prefill bucket that holds it, right-padded. The KV cache is one host array
[1, kv_heads, max_seq_len, head_dim] per layer and kind: the prompt's positions are copied in from the
prefill's outputs, each decode step reads it whole (a static input, as the HTP needs) and returns only
its new key and value, which are written at the step's position.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from ..artifact import TARGET_FILES, KVLayout, Manifest
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


def cpu_session(path: Path, threads: int | None = None):
    """A graph on ONNX Runtime's CPU provider: export's float calibration runs, and the QDQ graphs emulated
    on the CPU (QnnBackend.open(..., on_cpu=True)), which the Android engine's host tests compare with."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


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


# An artifact's QDQ graphs by role: "decode" and "prefill.T" per bucket T; with --htp-arch, the role
# "<role>.context" names each one's context binary.
def prefill_role(bucket: int) -> str:
    return f"prefill.{bucket}"


def graph_file(role: str) -> str:
    return TARGET_FILES["qnn"]["decode"] if role == "decode" else f"{role}.qdq.onnx"


def context_file(role: str) -> str:
    return f"{role}.ctx.onnx"


def prefill_feeds(ids: list[int], bucket: int) -> dict:
    """A prefill graph's inputs: the prompt right-padded to the bucket (with token 0), its mask and last position."""
    tokens = np.zeros((1, bucket), np.int64)
    tokens[0, : len(ids)] = ids
    mask = np.zeros((1, bucket), np.float32)
    mask[0, : len(ids)] = 1.0
    return {"input_ids": tokens, "attention_mask": mask, "last_position": np.array([len(ids) - 1], np.int64)}


class StaticKVCache:
    """The host KV cache and the decode graph's static feeds (module docstring)."""

    def __init__(self, kv: KVLayout, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.past_names, self.present_names = kv.past_names, kv.present_names
        self.arrays = [np.zeros((1, kv.num_kv_heads, max_seq_len, kv.head_dim), np.float32) for _ in self.past_names]

    def start(self, presents: dict, length: int) -> None:
        """A new sequence: the prompt's positions 0..length-1 from a prefill's present outputs (by name), the
        rest zero."""
        for array, name in zip(self.arrays, self.present_names):
            array.fill(0.0)
            array[:, :, :length] = presents[name][:, :, :length]

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
    """The graphs (role -> path: select, decode, prefill.T per bucket) over one StaticKVCache. open_graph(path)
    makes the prefill and decode sessions (the HTP's, or the float graphs' on the CPU for export's
    calibration); each bucket's is made when a prompt first needs it."""

    def __init__(self, graphs: dict[str, Path], buckets, open_graph, kv: KVLayout, m: int, max_seq_len: int,
                 threads: int | None = None, description: str = "qnn: prefill and decode on the QNN HTP backend, "
                                                                "selection on the CPU"):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.buckets = sorted(buckets)
        self.graphs, self.open_graph = graphs, open_graph
        self.cache = StaticKVCache(kv, max_seq_len)
        self.num_layers, self.m = kv.num_layers, m
        self.select_session = cpu_session(graphs["select"], threads)
        self.decode_session = open_graph(graphs["decode"])
        self.prefill_sessions: dict[int, object] = {}
        self.description = description
        self.on_decode = None  # called with each decode step's feeds (export's calibration keeps them)

    @classmethod
    def open(cls, directory: Path, manifest: Manifest, threads: int | None = None,
             on_cpu: bool = False) -> "QnnBackend":
        """on_cpu: the QDQ graphs on the CPU provider instead of the HTP (no onnxruntime-qnn needed; the
        reference the Android engine's host tests reproduce)."""
        files = manifest.files
        buckets = manifest.runtime["prefill_buckets"]
        roles = ["decode", *(prefill_role(b) for b in buckets)]
        # on the HTP, the precompiled context binaries when the export made them (--htp-arch); else the QDQ graphs
        graphs = {role: directory / (files[role] if on_cpu else files.get(f"{role}.context", files[role]))
                  for role in roles}
        graphs["select"] = directory / files["select"]
        arch = manifest.runtime.get("htp_arch")
        if on_cpu:
            def open_graph(path):
                return cpu_session(path, threads)
        else:
            def open_graph(path):
                return htp_session(path, htp_arch=arch)
        try:
            backend = cls(graphs, buckets, open_graph, manifest.kv, manifest.m, manifest.max_seq_len, threads)
        except GlassExportError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GlassExportError(f"onnxruntime cannot load {directory}: {exc}", "re-export the artifact") from exc
        backend.directory, backend.manifest = directory, manifest
        if on_cpu:
            backend.description = "qnn: the QDQ graphs and the selection on the CPU (no HTP)"
        elif "decode.context" in files:
            backend.description += f" (context binaries for HTP v{arch})"
        return backend

    def _prefill(self, ids: list[int]) -> PrefillResult:
        bucket = next((b for b in self.buckets if b >= len(ids)), None)
        if bucket is None:
            raise GlassExportError(
                f"the prompt has {len(ids)} tokens; this qnn artifact's prefill buckets take at most {self.buckets[-1]}",
                f"shorten the prompt, or re-export with a larger bucket (--prefill-buckets "
                f"{','.join(map(str, [*self.buckets, len(ids)]))})")
        if bucket not in self.prefill_sessions:
            self.prefill_sessions[bucket] = self.open_graph(self.graphs[prefill_role(bucket)])
        session = self.prefill_sessions[bucket]
        outputs = dict(zip((o.name for o in session.get_outputs()), session.run(None, prefill_feeds(ids, bucket))))
        self.cache.start(outputs, len(ids))
        if "glass_local_scores.0" in outputs:
            local = np.stack([outputs[f"glass_local_scores.{layer}"] for layer in range(self.num_layers)])
            (indices,) = self.select_session.run(None, {"glass_local_scores": local})
        else:  # the method needs no local scores: the kept set is a constant of the select graph
            (indices,) = self.select_session.run(None, {})
            local = np.zeros((self.num_layers, self.m), np.float32)
        return PrefillResult(outputs["logits"][0], indices, local)

    def _decode(self, token: int, position: int, indices: np.ndarray) -> np.ndarray:
        feeds = self.cache.decode_feeds(token, position, indices)
        if self.on_decode is not None:
            self.on_decode(feeds)
        logits, *presents = self.decode_session.run(None, feeds)
        self.cache.write(position, presents)
        return logits[0, -1]

    def close(self) -> None:
        self.select_session = self.decode_session = None
        self.prefill_sessions = {}
