"""QNN recipe: an NPU-shaped artifact for ONNX Runtime's QNN execution provider (Qualcomm HTP).

- prefill.T.qdq.onnx, one per prompt bucket T (--prefill-buckets): qnn_graph.StaticGraph's prefill
  (the dense prompt pass, right-padded to T tokens, and each layer's local scores), QDQ, on the HTP.
- select.onnx: the float selection ([L, m] local scores -> [L, k] kept indices), on the CPU EP: a
  sort over a few thousand scores, which the NPU has no use for.
- decode.qdq.onnx: the static decode graph, QDQ, on the HTP.
- model.qdq.onnx.data: the QDQ graphs' weights, each distinct tensor once (the buckets and decode
  share their projections).

Quantisation: ONNX Runtime's QNN recipe (onnxruntime.quantization's get_qnn_qdq_config;
QDQ_DESCRIPTION). The activation ranges come from calibration on the CPU with the float graphs:
prompts of the shipped instructions' tune half (chat-templated when the tokenizer has a template),
padded into each bucket for the prefill graphs, and the decode steps the float graphs take from them
for the decode graph. The export loads every QDQ graph on the HTP backend with CPU fallback
disabled, when onnxruntime-qnn is installed, and records where its nodes ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..artifact import TARGET_FILES
from ..errors import GlassExportError
from ..quantization import QuantScheme
from ..runtime.qnn_backend import context_file, graph_file, prefill_role
from . import ExportContext, RecipeOutput
from .onnx_graph import INLINE_LIMIT, GraphPlan, WeightStore, save_graphs
from .qnn_graph import StaticGraph

STEPS = ("building graphs", "calibrating activations", "quantising graphs (QDQ)", "loading graphs on the HTP",
         "compiling QNN context binaries")
WEIGHT_SCHEMES = ("fp32", "int8", "int4")  # accepted here so check_quant can say why --quant does not apply
FILES = TARGET_FILES["qnn"]
DEFAULT_PREFILL_BUCKETS = (64, 256)  # each cut to max_seq_len - 1 (a prompt leaves room for one new token)
FLOAT_WEIGHTS = "float.onnx.data"  # the float graphs' weights, in a scratch directory
CALIBRATION_PROMPTS = 8  # of the shipped instructions' tune half
CALIBRATION_STEPS = 8  # decode steps per prompt
# Each calibrated activation range is widened to this many times its span (about its centre): with
# uint16 activations that costs one of 16 bits, and keeps what calibration did not see (a rare token's
# embedding, a longer context's logits) from clipping.
RANGE_MARGIN = 2.0
QDQ_DESCRIPTION = ("QDQ (onnxruntime.quantization, QNN recipe): uint16 activations; uint8 weights per output channel "
                   "for the projections (1x1 Conv), uint16 per tensor for the gathered ones (embedding, FFN rows), to "
                   "which Gather passes the activations' type")


def prefill_buckets(requested: tuple[int, ...] | None, max_seq_len: int) -> tuple[int, ...]:
    """The buckets to build, ascending: the requested ones (checked), or the defaults cut to max_seq_len - 1."""
    if requested is None:
        return tuple(sorted({min(b, max_seq_len - 1) for b in DEFAULT_PREFILL_BUCKETS}))
    too_long = [b for b in requested if not 1 <= b < max_seq_len]
    if too_long:
        raise GlassExportError(f"--prefill-buckets {','.join(map(str, too_long))}: a bucket must be 1 .. max_seq_len - 1 "
                               f"({max_seq_len - 1}) tokens, leaving room for the generated ones",
                               "choose smaller buckets or a larger --max-seq-len")
    return tuple(sorted(set(requested)))


def check_quant(quant: QuantScheme) -> None:
    if quant.quantized:
        raise GlassExportError(f"--target qnn quantises its graphs itself ({QDQ_DESCRIPTION}); --quant "
                               f"{quant.weights} is for the CPU targets", "drop --quant for --target qnn")


def calibration_feeds(ctx: ExportContext, scratch: Path, buckets: tuple[int, ...]) -> dict[str, list[dict]]:
    """Each float graph's inputs (role -> feeds): the calibration prompts padded into each bucket, and the
    decode steps of greedy decodes from them, all run on the CPU."""
    from ..artifact import KVLayout
    from ..generation import generate
    from ..prompts import encode_prompt, read_prompt_set
    from ..runtime.qnn_backend import QnnBackend, cpu_session, prefill_feeds

    graphs = {"select": ctx.out / FILES["select"], "decode": scratch / FILES["decode"],
              **{prefill_role(b): scratch / graph_file(prefill_role(b)) for b in buckets}}
    backend = QnnBackend(graphs, buckets, cpu_session, KVLayout.of(ctx.model.config, ""), ctx.info.intermediate_size,
                         ctx.max_seq_len,
                         description="qnn graphs, float, on the CPU")
    feeds: dict[str, list[dict]] = {role: [] for role in graphs if role != "select"}
    backend.on_decode = lambda step: feeds["decode"].append({k: np.array(v, copy=True) for k, v in step.items()})
    steps = min(CALIBRATION_STEPS, ctx.max_seq_len - buckets[-1])  # decode steps after the longest prompt
    chat = bool(getattr(ctx.tokenizer, "chat_template", None))  # as an instruction model is prompted
    for prompt in read_prompt_set(None, "tune")[:CALIBRATION_PROMPTS]:
        ids = encode_prompt(ctx.tokenizer, prompt, chat)
        for bucket in buckets:
            feeds[prefill_role(bucket)].append(prefill_feeds(ids[:bucket], bucket))
        # the first token comes from the prefill, each later one from a decode step
        generate(backend, ids[: buckets[-1]], steps + 1)
    backend.close()
    return feeds


def quantize_graph(source: Path, target: Path, feeds: list[dict], ranges: Path) -> None:
    """QDQ-quantise a float graph: activation ranges from the feeds (MinMax) into the calibration cache
    `ranges`, each widened by RANGE_MARGIN, then ONNX Runtime's QNN recipe with those ranges."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, load_tensors_data, save_tensors_data
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

        def __len__(self):
            return len(feeds)

        def set_range(self, start_index: int, end_index: int):
            self.items = iter(feeds[start_index:end_index])

    config = get_qnn_qdq_config(str(source), Reader(), activation_type=QuantType.QUInt16,
                                weight_type=QuantType.QUInt8, per_channel=True)
    # ranges from a few runs at a time (the stride must divide the count): bounded memory, one run at a time
    # for the prefill graphs, whose every tensor holds a whole bucket
    most = max(1, 8 // feeds[0]["input_ids"].shape[1])
    config.extra_options["CalibStridedMinMax"] = next(s for s in (8, 4, 2, 1) if len(feeds) % s == 0 and s <= most)
    options = dict(calibrate_method=config.calibrate_method, quant_format=config.quant_format,
                   activation_type=config.activation_type, weight_type=config.weight_type,
                   op_types_to_quantize=config.op_types_to_quantize, nodes_to_quantize=config.nodes_to_quantize,
                   nodes_to_exclude=config.nodes_to_exclude, per_channel=config.per_channel,
                   reduce_range=config.reduce_range, use_external_data_format=True,
                   calibration_providers=config.calibration_providers, extra_options=config.extra_options)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process (done: symbolic shapes) goes to the root logger
    try:
        # pass 1 measures the ranges (its model, quantised with them unwidened, is discarded)
        measured_model = target.with_name(target.stem + ".measured.onnx")
        quantize_static(str(source), str(measured_model), config.calibration_data_reader,
                        calibration_cache_path=ranges, **options)
        measured = load_tensors_data(ranges)
        for name, data in list(measured.data.items()):
            low, high = np.float32(data.range_value[0]), np.float32(data.range_value[1])
            widen = np.float32((RANGE_MARGIN - 1) / 2) * (high - low)
            measured[name] = TensorData(lowest=low - widen, highest=high + widen)
        save_tensors_data(measured, ranges)
        quantize_static(str(source), str(target), None, calibration_cache_path=ranges, **options)  # the ranges kept
    finally:
        root.setLevel(level)


def write_shared_weights(sources: dict[str, Path], directory: Path, data_name: str) -> dict:
    """Rewrite each quantised graph (role -> path) into directory/graph_file(role) with one weights file,
    each distinct tensor once (by content: the buckets and decode quantise their shared projections
    alike). Returns {"bytes_written", "bytes_referenced"}."""
    import onnx

    offsets: dict[str, tuple[int, int]] = {}  # sha256 -> (offset, length)
    referenced = 0
    with open(directory / data_name, "wb") as data:
        for role, path in sources.items():
            model = onnx.load(str(path), load_external_data=True)
            for tensor in model.graph.initializer:
                raw = onnx.numpy_helper.to_array(tensor).tobytes()
                if len(raw) < INLINE_LIMIT:
                    continue
                referenced += len(raw)
                key = hashlib.sha256(raw).hexdigest()
                if key not in offsets:
                    data.write(b"\0" * ((-data.tell()) % (4096 if len(raw) >= 1 << 20 else 64)))
                    offsets[key] = (data.tell(), len(raw))
                    data.write(raw)
                offset, length = offsets[key]
                tensor.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(field)
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    tensor.external_data.append(onnx.StringStringEntryProto(key=k, value=v))
            onnx.save(model, str(directory / graph_file(role)))
        written = data.tell()
    return {"bytes_written": written, "bytes_referenced": referenced}


def export(ctx: ExportContext) -> RecipeOutput:
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from ..models.decoder import decoder_spec
    from ..runtime.qnn_backend import QNN_EP, htp_session, node_partition, qnn_available

    info, config = ctx.info, ctx.selection
    m, num_layers, k = info.intermediate_size, info.num_layers, config.keep_count(info.intermediate_size)
    buckets = prefill_buckets(ctx.prefill_buckets, ctx.max_seq_len)
    spec = decoder_spec(ctx.model)
    plan = GraphPlan(spec, config, ctx.global_rank, QuantScheme(), ctx.max_seq_len)
    ctx.step("building graphs")
    scratch = ctx.out / "scratch"
    scratch.mkdir()
    weights = WeightStore()
    selection = StaticGraph(plan, weights, "select").build_selection()
    onnx.save(selection.g.model("glass_select", [], lambda n: onnx.numpy_helper.from_array(weights.arrays[n], n)),
              str(ctx.out / FILES["select"]))
    graphs = {prefill_role(b): StaticGraph(plan, weights, "prefill").build_prefill(b) for b in buckets}
    graphs["decode"] = StaticGraph(plan, weights, "decode").build_decode()
    roles = list(graphs)
    float_stats = save_graphs(graphs, weights, scratch, {role: graph_file(role) for role in roles}, FLOAT_WEIGHTS)
    del weights, graphs
    # The calibrator only records tensors whose types are known; onnx's own inference stops at
    # ONNX Runtime's SimplifiedLayerNormalization, the symbolic one does not (it reads some constants'
    # values, from the weights file beside the graph: hence the working directory).
    with contextlib.chdir(scratch):
        for role in roles:
            model = onnx.load(graph_file(role), load_external_data=False)
            onnx.save(SymbolicShapeInference.infer_shapes(model, auto_merge=True), graph_file(role))

    ctx.step("calibrating activations")
    feeds = calibration_feeds(ctx, scratch, buckets)

    ctx.step("quantising graphs (QDQ)")
    quantised, ranges = scratch / "qdq", {}
    quantised.mkdir()
    for role in roles:
        quantize_graph(scratch / graph_file(role), quantised / graph_file(role), feeds[role],
                       quantised / f"{role}.ranges.json")
        ranges[role] = json.loads((quantised / f"{role}.ranges.json").read_text())
    (ctx.out / FILES["activation_ranges"]).write_text(json.dumps(ranges) + "\n")  # kept: the calibration's provenance
    shared = write_shared_weights({role: quantised / graph_file(role) for role in roles}, ctx.out, FILES["weights"])
    shutil.rmtree(scratch)
    qdq_nodes = {role: len(onnx.load(str(ctx.out / graph_file(role)), load_external_data=False).graph.node)
                 for role in roles}

    ctx.step("loading graphs on the HTP")
    partition = None
    if qnn_available():
        partition = {}
        for role in roles:
            try:
                session = htp_session(ctx.out / graph_file(role), profile_prefix=str(ctx.out / "qnn_profile"))
            except Exception as exc:  # onnxruntime raises its own types; with CPU fallback disabled, any node the HTP lacks
                raise GlassExportError(f"the QNN HTP backend does not take this model's {role} graph whole: {exc}",
                                       "export --target onnx for this model, and report its config.json") from exc
            ran_on = node_partition(session, feeds[role][0])
            if set(ran_on) != {QNN_EP}:
                raise GlassExportError(f"internal: {role} nodes ran outside the HTP: {ran_on}")
            partition[role] = {"graph_nodes": qdq_nodes[role], "ran_on": ran_on, "cpu_fallback": "disabled"}
        partition["select"] = {"ran_on": {"CPUExecutionProvider": "all"}, "why": "a sort of [L, m] float scores"}

    files = {**FILES, **{role: graph_file(role) for role in roles}}
    if ctx.htp_arch is not None:
        ctx.step("compiling QNN context binaries")
        for role in roles:
            files[f"{role}.context"] = context_file(role)
            htp_session(ctx.out / graph_file(role), htp_arch=ctx.htp_arch,
                        config={"ep.context_enable": "1", "ep.context_embed_mode": "1",
                                "ep.context_file_path": str(ctx.out / context_file(role))})

    kv_buffer = f"float32 [1, kv_heads, {ctx.max_seq_len}, head_dim]"
    scores = "each layer's float32 [m]" if config.needs_local_stats else "none (the method needs no local scores)"
    manifest_graphs = {
        **{prefill_role(b): {
            "file": graph_file(prefill_role(b)),
            "runs_on": "QNN HTP",
            "inputs": {"input_ids": f"int64 [1, {b}]: the prompt, right-padded (any token id)",
                       "attention_mask": f"float32 [1, {b}]: 1 for the prompt's tokens, 0 for the padding",
                       "last_position": "int64 [1]: the prompt's last token (its length - 1)"},
            "outputs": {"logits": "float32 [1, 1, vocab]: the last token's",
                        "glass_local_scores.N": f"{scores}: sqrt(sum over the prompt's tokens of (z / ||z||)^2)",
                        "present.N.key / .value": f"float32 [1, kv_heads, {b}, head_dim]: the runner copies the "
                                                  "prompt's positions into the cache"},
            "nodes": qdq_nodes[prefill_role(b)],
        } for b in buckets},
        "select": {
            "file": FILES["select"],
            "runs_on": "CPU",
            "inputs": {"glass_local_scores": f"float32 [{num_layers}, {m}]: the prefill's, stacked"}
            if config.needs_local_stats else {},
            "outputs": {"glass_indices": f"int64 [{num_layers}, {k}], ascending per layer"},
            "nodes": len(selection.g.nodes),
        },
        "decode": {
            "file": FILES["decode"],
            "runs_on": "QNN HTP",
            "inputs": {"input_ids": "int64 [1, 1]", "position_ids": "int64 [1, 1] (= tokens already in the cache)",
                       "attention_mask": f"float32 [1, 1, 1, {ctx.max_seq_len + 1}]: 1 for cache positions "
                                         f"0..position_ids-1 and for the last slot (this step), else 0",
                       "glass_indices": f"int64 [{num_layers}, {k}] from select"
                       + ("" if config.sparse_decode else " (unused by the dense FFN)"),
                       "past_key_values.N.key / .value": kv_buffer + " (static, read only)"},
            "outputs": {"logits": "float32 [1, 1, vocab]",
                        "present.N.key / .value": "float32 [1, kv_heads, 1, head_dim]: this step's, for the "
                                                  "runner to write at position_ids"},
            "nodes": qdq_nodes["decode"],
        },
    }
    runtime = {
        "runtime": "onnxruntime: QNN execution provider, HTP backend (prefill, decode); CPU execution provider (select)",
        "qnn_package": "onnxruntime-qnn 2.7.0 (a plugin execution provider for onnxruntime >= 1.24.2)",
        "prefill_buckets": list(buckets),
        "quantization": QDQ_DESCRIPTION,
        "calibration": {"prompts": f"the shipped instructions' tune half, first {CALIBRATION_PROMPTS}",
                        "runs": {role: len(feeds[role]) for role in roles},
                        "activation_ranges": f"{FILES['activation_ranges']} (per graph, onnxruntime.quantization's "
                                             f"calibration cache: every tensor's range, widened {RANGE_MARGIN:g}x)"},
        "operators": "stock ONNX operators only (decode's FFN: Gather of the kept rows + MatMul)",
        "custom_ops": [],
        "weights_bytes": shared["bytes_written"],
        "weights_referenced_bytes": shared["bytes_referenced"],
        "float_weights_bytes": float_stats["bytes_written"],
        "partition": partition or "not checked: onnxruntime-qnn was not installed at export",
        **({"htp_arch": ctx.htp_arch,
            "context_binaries": f"*.ctx.onnx: each QDQ graph compiled for HTP v{ctx.htp_arch} (an EPContext node "
                                "embedding the QNN context binary); runners load them instead of compiling"}
           if ctx.htp_arch is not None else {}),
    }
    kv_storage = ("host arrays of max_seq_len positions per layer and kind: the runner copies the prefill's "
                  "positions in, decode reads them whole and returns its new position")
    return RecipeOutput(manifest_graphs, runtime, files=files, kv_storage=kv_storage)
