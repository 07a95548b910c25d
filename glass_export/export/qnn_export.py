"""QNN recipe: an NPU-shaped artifact for ONNX Runtime's QNN execution provider (Qualcomm HTP).

- prefill.onnx + model.onnx.data: the ONNX target's prefill graph (float32: dense pass, local
  statistics, the selection), run on the CPU execution provider. The selection is a small [L, m]
  sort, so it stays on the CPU; the dense prompt pass moving to the HTP needs fixed prompt buckets
  (not built yet).
- decode.qdq.onnx + decode.qdq.onnx.data: qnn_graph.StaticDecodeGraph, quantised to QDQ with ONNX
  Runtime's QNN recipe (onnxruntime.quantization's get_qnn_qdq_config; QDQ_DESCRIPTION). Its
  activation ranges come from calibration: the float graph decodes prompts of the shipped
  instructions' tune half on the CPU (chat-templated when the tokenizer has a template), and every
  step's inputs are the calibration data.
- The export loads the QDQ decode graph on the HTP backend with CPU fallback disabled, when
  onnxruntime-qnn is installed, and records where its nodes ran.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from ..artifact import TARGET_FILES
from ..errors import GlassExportError
from ..quantization import QuantScheme
from . import ExportContext, RecipeOutput
from .onnx_graph import GraphPlan, WeightStore, save_graphs, write_graphs
from .qnn_graph import StaticDecodeGraph

STEPS = ("building prefill graph", "building decode graph", "calibrating decode activations",
         "quantising decode graph (QDQ)", "loading decode graph on the HTP", "compiling the QNN context binary")
WEIGHT_SCHEMES = ("fp32", "int8", "int4")  # accepted here so check_quant can say why --quant does not apply
FILES = TARGET_FILES["qnn"]
CONTEXT_FILE = "decode.ctx.onnx"  # with --htp-arch: the decode graph precompiled for that HTP
FLOAT_DECODE = "decode.float.onnx"  # the graph before quantisation, in a scratch directory
CALIBRATION_PROMPTS = 8  # of the shipped instructions' tune half
CALIBRATION_STEPS = 8  # decode steps per prompt
# Each calibrated activation range is widened to this many times its span (about its centre): with
# uint16 activations that costs one of 16 bits, and keeps what calibration did not see (a rare token's
# embedding, a longer context's logits) from clipping.
RANGE_MARGIN = 2.0
QDQ_DESCRIPTION = ("QDQ (onnxruntime.quantization, QNN recipe): uint16 activations; uint8 weights per output channel "
                   "for the projections (1x1 Conv), uint16 per tensor for the gathered ones (embedding, FFN rows), to "
                   "which Gather passes the activations' type")


def check_quant(quant: QuantScheme) -> None:
    if quant.quantized:
        raise GlassExportError(f"--target qnn quantises its decode graph itself ({QDQ_DESCRIPTION}); --quant "
                               f"{quant.weights} is for the CPU targets", "drop --quant for --target qnn")


def calibration_feeds(ctx: ExportContext, scratch: Path) -> list[dict]:
    """The float decode graph's inputs over greedy decodes of the calibration prompts (on the CPU)."""
    import onnxruntime as ort

    from ..artifact import KVLayout
    from ..generation import generate
    from ..prompts import encode_prompt, read_prompt_set
    from ..runtime.qnn_backend import QnnBackend, session_options

    decode = ort.InferenceSession(str(scratch / FLOAT_DECODE), session_options(), providers=["CPUExecutionProvider"])
    backend = QnnBackend(ctx.out / FILES["prefill"], decode, KVLayout.of(ctx.model.config, ""), ctx.max_seq_len,
                         description="qnn graphs, float decode on the CPU")
    feeds: list[dict] = []
    backend.on_decode = lambda step: feeds.append({name: np.array(value, copy=True) for name, value in step.items()})
    steps = min(CALIBRATION_STEPS, ctx.max_seq_len - 1)  # decode steps; the prompt keeps at least one token
    chat = bool(getattr(ctx.tokenizer, "chat_template", None))  # as an instruction model is prompted
    for prompt in read_prompt_set(None, "tune")[:CALIBRATION_PROMPTS]:
        # the first token comes from the prefill, each later one from a decode step
        generate(backend, encode_prompt(ctx.tokenizer, prompt, chat)[: ctx.max_seq_len - steps], steps + 1)
    backend.close()
    return feeds


def quantize_decode(source: Path, target: Path, feeds: list[dict], scratch: Path) -> None:
    """QDQ-quantise the float decode graph: activation ranges from the feeds (MinMax), each widened by
    RANGE_MARGIN, then ONNX Runtime's QNN recipe."""
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
    # ranges from a few steps at a time (the stride must divide the count): bounded memory
    config.extra_options["CalibStridedMinMax"] = next(s for s in (8, 4, 2, 1) if len(feeds) % s == 0)
    options = dict(calibrate_method=config.calibrate_method, quant_format=config.quant_format,
                   activation_type=config.activation_type, weight_type=config.weight_type,
                   op_types_to_quantize=config.op_types_to_quantize, nodes_to_quantize=config.nodes_to_quantize,
                   nodes_to_exclude=config.nodes_to_exclude, per_channel=config.per_channel,
                   reduce_range=config.reduce_range, use_external_data_format=True,
                   calibration_providers=config.calibration_providers, extra_options=config.extra_options)
    ranges = scratch / "activation_ranges.json"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process (done: symbolic shapes) goes to the root logger
    try:
        # pass 1 measures the ranges (its model, quantised with them unwidened, is discarded)
        quantize_static(str(source), str(scratch / "measured.onnx"), config.calibration_data_reader,
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


def export(ctx: ExportContext) -> RecipeOutput:
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from ..models.decoder import decoder_spec
    from ..runtime.qnn_backend import QNN_EP, htp_session, node_partition, qnn_available

    info, config = ctx.info, ctx.selection
    m, num_layers, k = info.intermediate_size, info.num_layers, config.keep_count(info.intermediate_size)
    spec = decoder_spec(ctx.model)
    plan = GraphPlan(spec, config, ctx.global_rank, QuantScheme(), ctx.max_seq_len)
    ctx.step("building prefill graph")
    prefill_stats = write_graphs(plan, ctx.out, {"prefill": FILES["prefill"]}, FILES["weights"])

    ctx.step("building decode graph")
    scratch = ctx.out / "scratch"
    scratch.mkdir()
    weights = WeightStore()
    decode = StaticDecodeGraph(plan, weights).build_decode()
    save_graphs({"decode": decode}, weights, scratch, {"decode": FLOAT_DECODE}, FLOAT_DECODE + ".data")
    del weights
    # The calibrator only records tensors whose types are known; onnx's own inference stops at
    # ONNX Runtime's SimplifiedLayerNormalization, the symbolic one does not.
    float_model = onnx.load(str(scratch / FLOAT_DECODE), load_external_data=False)
    onnx.save(SymbolicShapeInference.infer_shapes(float_model, auto_merge=True), str(scratch / FLOAT_DECODE))

    ctx.step("calibrating decode activations")
    feeds = calibration_feeds(ctx, scratch)

    ctx.step("quantising decode graph (QDQ)")
    quantize_decode(scratch / FLOAT_DECODE, ctx.out / FILES["decode"], feeds, scratch)
    shutil.move(scratch / "activation_ranges.json", ctx.out / FILES["activation_ranges"])  # kept: provenance
    shutil.rmtree(scratch)
    produced = ctx.out / (FILES["decode"] + ".data")
    if produced.name != FILES["decode_weights"]:
        raise GlassExportError(f"internal: the quantiser wrote {produced.name}, expected {FILES['decode_weights']}")
    produced.chmod(0o644)  # the quantiser writes it as a private temporary file; the artifact's files are readable
    qdq_nodes = len(onnx.load(str(ctx.out / FILES["decode"]), load_external_data=False).graph.node)

    ctx.step("loading decode graph on the HTP")
    partition = None
    if qnn_available():
        try:
            session = htp_session(ctx.out / FILES["decode"], profile_prefix=str(ctx.out / "qnn_profile"))
        except Exception as exc:  # onnxruntime raises its own types; with CPU fallback disabled, any node the HTP lacks
            raise GlassExportError(f"the QNN HTP backend does not take this model's decode graph whole: {exc}",
                                   "export --target onnx for this model, and report its config.json") from exc
        partition = {"decode": {"graph_nodes": qdq_nodes, "ran_on": node_partition(session, feeds[0]),
                                "cpu_fallback": "disabled"}}
        if set(partition["decode"]["ran_on"]) != {QNN_EP}:
            raise GlassExportError(f"internal: decode nodes ran outside the HTP: {partition['decode']['ran_on']}")

    files = dict(FILES)
    if ctx.htp_arch is not None:
        ctx.step("compiling the QNN context binary")
        files["decode_context"] = CONTEXT_FILE
        htp_session(ctx.out / FILES["decode"], htp_arch=ctx.htp_arch,
                    config={"ep.context_enable": "1", "ep.context_embed_mode": "1",
                            "ep.context_file_path": str(ctx.out / CONTEXT_FILE)})

    kv_buffer = f"float32 [1, kv_heads, {ctx.max_seq_len}, head_dim]"
    graphs = {
        "prefill": {
            "file": FILES["prefill"],
            "runs_on": "CPU",
            "inputs": {"input_ids": "int64 [1, T]", "past_key_values.N.key / .value": kv_buffer},
            "outputs": {"logits": "float32 [1, T, vocab]", "glass_local_scores": f"float32 [{num_layers}, {m}]",
                        "glass_indices": f"int64 [{num_layers}, {k}], ascending per layer",
                        "present.N.key / present.N.value": kv_buffer + ", positions 0..T-1 written"},
            "nodes": prefill_stats["nodes"]["prefill"],
        },
        "decode": {
            "file": FILES["decode"],
            "runs_on": "QNN HTP",
            "inputs": {"input_ids": "int64 [1, 1]", "position_ids": "int64 [1, 1] (= tokens already in the cache)",
                       "attention_mask": f"float32 [1, 1, 1, {ctx.max_seq_len + 1}]: 1 for cache positions "
                                         f"0..position_ids-1 and for the last slot (this step), else 0",
                       "glass_indices": f"int64 [{num_layers}, {k}] from prefill"
                       + ("" if config.sparse_decode else " (unused by the dense FFN)"),
                       "past_key_values.N.key / .value": kv_buffer + " (static, read only)"},
            "outputs": {"logits": "float32 [1, 1, vocab]",
                        "present.N.key / .value": "float32 [1, kv_heads, 1, head_dim]: this step's, for the "
                                                  "runner to write at position_ids"},
            "nodes": qdq_nodes,
        },
    }
    runtime = {
        "runtime": "onnxruntime: CPU execution provider (prefill), QNN execution provider, HTP backend (decode)",
        "qnn_package": "onnxruntime-qnn 2.7.0 (a plugin execution provider for onnxruntime >= 1.24.2)",
        "decode_quantization": QDQ_DESCRIPTION,
        "calibration": {"prompts": f"the shipped instructions' tune half, first {CALIBRATION_PROMPTS}",
                        "decode_steps": len(feeds),
                        "activation_ranges": f"{FILES['activation_ranges']} (onnxruntime.quantization's calibration "
                                             f"cache: every tensor's range, widened {RANGE_MARGIN:g}x)"},
        "operators": "stock ONNX operators only in decode (Gather of the kept rows + MatMul for the FFN)",
        "custom_ops": [],
        "weights_bytes": prefill_stats["bytes_written"],
        "decode_weights_bytes": (ctx.out / FILES["decode_weights"]).stat().st_size,
        "partition": partition or "not checked: onnxruntime-qnn was not installed at export",
        **({"htp_arch": ctx.htp_arch,
            "context_binary": f"{CONTEXT_FILE}: the decode graph compiled for HTP v{ctx.htp_arch} (an EPContext node "
                              "embedding the QNN context binary); runners load it instead of compiling"}
           if ctx.htp_arch is not None else {}),
    }
    kv_storage = ("host arrays of max_seq_len positions per layer and kind: prefill writes them in place, decode "
                  "reads them whole and returns its new position")
    return RecipeOutput(graphs, runtime, files=files, kv_storage=kv_storage)
