"""glass::gather_ffn in ONNX: the custom-domain op `glass.GatherFFN` and its function fallback.

`torch.onnx.export(..., dynamo=True, custom_translation_table=TRANSLATION_TABLE)`
emits one `glass.GatherFFN` node per FFN. `add_function_fallback(model)` then
appends a model-local FunctionProto with the same domain and name, written with
stock ONNX ops (Gather + MatMul), so a stock onnxruntime runs the model; a
registered native kernel for glass.GatherFFN takes precedence over it.
"""

from __future__ import annotations

import onnx
import onnxscript
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op

DOMAIN = "glass"
OPSET_VERSION = 1
OP_TYPE = "GatherFFN"
glass_opset = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)


def _translate_gather_ffn(x: FLOAT, w_gate_up: FLOAT, w_down_t: FLOAT, idx: INT64, activation: int) -> FLOAT:
    return glass_opset.GatherFFN(x, w_gate_up, w_down_t, idx, activation=activation)


def translation_table() -> dict:
    import torch

    import glass_ops  # noqa: F401  (defines torch.ops.glass)

    return {torch.ops.glass.gather_ffn.default: onnxscript.script(glass_opset)(_translate_gather_ffn)}


# Function bodies, one per activation; `activation` stays a declared attribute so the node is valid either way.
@onnxscript.script(glass_opset)
def _gather_ffn_silu(x: FLOAT, w_gate_up: FLOAT, w_down_t: FLOAT, idx: INT64, activation: int) -> FLOAT:
    kept = op.Gather(w_gate_up, idx, axis=0)  # [k, 2, d]
    gate = op.Gather(kept, op.Constant(value_int=0), axis=1)  # [k, d]
    up = op.Gather(kept, op.Constant(value_int=1), axis=1)
    g = op.MatMul(x, op.Transpose(gate, perm=[1, 0]))
    h = g * op.Sigmoid(g) * op.MatMul(x, op.Transpose(up, perm=[1, 0]))
    return op.MatMul(h, op.Gather(w_down_t, idx, axis=0))


@onnxscript.script(glass_opset)
def _gather_ffn_gelu_tanh(x: FLOAT, w_gate_up: FLOAT, w_down_t: FLOAT, idx: INT64, activation: int) -> FLOAT:
    kept = op.Gather(w_gate_up, idx, axis=0)
    gate = op.Gather(kept, op.Constant(value_int=0), axis=1)
    up = op.Gather(kept, op.Constant(value_int=1), axis=1)
    g = op.MatMul(x, op.Transpose(gate, perm=[1, 0]))
    inner = op.Constant(value_float=0.7978845608028654) * (g + op.Constant(value_float=0.044715) * g * g * g)
    act = op.Constant(value_float=0.5) * g * (op.Constant(value_float=1.0) + op.Tanh(inner))
    h = act * op.MatMul(x, op.Transpose(up, perm=[1, 0]))
    return op.MatMul(h, op.Gather(w_down_t, idx, axis=0))


_BODIES = {0: _gather_ffn_silu, 1: _gather_ffn_gelu_tanh}


def function_proto(activation: int, onnx_opset: int) -> onnx.FunctionProto:
    """The fallback body, importing the same default-domain opset as the model that holds it.

    Its ops (Gather, MatMul, Transpose, Sigmoid, Tanh, Mul, Add, Constant) mean the same from opset 18 on.
    """
    proto = _BODIES[activation].to_function_proto()
    proto.name = OP_TYPE
    proto.domain = DOMAIN
    for entry in proto.opset_import:
        if entry.domain == "":
            entry.version = onnx_opset
    return proto


def add_function_fallback(model: onnx.ModelProto) -> onnx.ModelProto:
    """Append the GatherFFN function body matching the activation the model's nodes use."""
    activations = {
        attr.i
        for node in _all_nodes(model.graph)
        if node.domain == DOMAIN and node.op_type == OP_TYPE
        for attr in node.attribute
        if attr.name == "activation"
    }
    if not activations:
        return model
    if len(activations) > 1:
        raise ValueError(f"one activation per model expected, found codes {sorted(activations)}")
    for existing in list(model.functions):
        if existing.domain == DOMAIN and existing.name == OP_TYPE:
            model.functions.remove(existing)
    onnx_opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    model.functions.append(function_proto(activations.pop(), onnx_opset))
    imports = {entry.domain for entry in model.opset_import}
    if DOMAIN not in imports:
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION))
    return model


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
