"""ONNX recipe: prefill.onnx + decode.onnx over one shared weights file.

The graphs are built node by node with ONNX Runtime's fused operators (onnx_graph.py); every
weight scheme is supported (MatMulNBits / GatherBlockQuantized / the glass ops' quantised forms).
"""

from __future__ import annotations

from pathlib import Path

from glass_ops import native, onnx_ops

from ..artifact import TARGET_FILES
from ..models.decoder import decoder_spec
from . import ExportContext, RecipeOutput
from .onnx_graph import OPSET, GraphPlan, write_graphs

STEPS = ("building and writing graphs", "checking graphs")
WEIGHT_SCHEMES = ("fp32", "int8", "int4")
FILES = TARGET_FILES["onnx"]


def check_quant(quant) -> None:
    """Every scheme and accuracy level is available on ONNX Runtime."""


def check_loads(directory: Path, names) -> None:
    """Both graphs load in a stock onnxruntime (the glass ops through their function fallbacks).

    (onnx.checker cannot judge these graphs: ONNX Runtime's SimplifiedLayerNormalization lives in
    the default domain, where the checker knows only standard ops.)
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a load check, quickly
    for name in names:
        ort.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"])


def export(ctx: ExportContext) -> RecipeOutput:
    info, config, quant = ctx.info, ctx.selection, ctx.quant
    m, num_layers, k = info.intermediate_size, info.num_layers, config.keep_count(info.intermediate_size)
    ctx.step("building and writing graphs")
    spec = decoder_spec(ctx.model)
    plan = GraphPlan(spec, config, ctx.global_rank, quant, ctx.max_seq_len)
    quant.check_dims({"hidden size": spec.hidden_size, "attention width (heads x head_dim)": spec.num_heads * spec.head_dim,
                      **({"intermediate size": m} if plan.stock_down else {})})
    stats = write_graphs(plan, ctx.out, {"prefill": FILES["prefill"], "decode": FILES["decode"]}, FILES["weights"])
    ctx.step("checking graphs")
    check_loads(ctx.out, (FILES["prefill"], FILES["decode"]))

    kv_buffer = f"float32 [1, kv_heads, {ctx.max_seq_len}, head_dim]"
    graphs = {
        "prefill": {
            "file": FILES["prefill"],
            "inputs": {"input_ids": "int64 [1, T]", "past_key_values.N.key / .value": kv_buffer},
            "outputs": {
                "logits": "float32 [1, T, vocab]",
                "glass_local_scores": f"float32 [{num_layers}, {m}]",
                "glass_indices": f"int64 [{num_layers}, {k}], ascending per layer",
                "present.N.key / present.N.value": kv_buffer + ", positions 0..T-1 written",
            },
            "nodes": stats["nodes"]["prefill"],
        },
        "decode": {
            "file": FILES["decode"],
            "inputs": {
                "input_ids": "int64 [1, 1]",
                "position_ids": "int64 [1, 1] (= tokens already in the cache)",
                "glass_indices": f"int64 [{num_layers}, {k}] from prefill"
                + ("" if config.sparse_decode else " (unused by the dense FFN)"),
                "past_key_values.N.key / .value": kv_buffer,
            },
            "outputs": {"logits": "float32 [1, 1, vocab]",
                        "present.N.key / .value": kv_buffer + ", position position_ids written"},
            "nodes": stats["nodes"]["decode"],
        },
    }
    runtime = {
        "runtime": "onnxruntime (CPU execution provider)",
        "opset": OPSET,
        "operators": "GroupQueryAttention, SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization"
                     + (", MatMulNBits, GatherBlockQuantized" if quant.quantized else ", MatMul, Gather"),
        "custom_ops": [f"{onnx_ops.DOMAIN}.{op}" for op in stats["custom_ops"]],
        "weights_bytes": stats["bytes_written"],
        "weights_bytes_referenced_by_graphs": stats["bytes_referenced"],
    }
    if stats["custom_ops"]:  # dense twins run stock operators only
        runtime.update({
            "custom_opset": {"domain": onnx_ops.DOMAIN, "version": onnx_ops.OPSET_VERSION},
            "native_library": native.ONNX_RUNTIME_LIB,
            "fallback": "model-local ONNX functions of stock ops, used when the native library is not registered",
        })
    return RecipeOutput(graphs, runtime, kv_storage="one buffer of max_seq_len positions per layer and kind, bound as "
                                                    "both past input and present output (written in place)")
