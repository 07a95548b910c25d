"""The glass ops in ONNX (domain `glass`, opset 1) and their model-local function fallbacks.

| op | inputs | attributes |
|---|---|---|
| `GatherFFN` | x [..., d], w_gate_up [m, 2, d], w_down_t [m, d], idx [k] | activation |
| `GatherFFNQ` | x, gate_up codes [2m, d/g, g*b/8], gate_up scales [2m, d/g], down codes [m, ...], down scales, idx | activation, bits, block_size, accuracy_level |
| `FFNDownQ` | z [..., m], down codes [m, d/g, g*b/8], down scales [m, d/g] | bits, block_size |

Quantised rows follow MatMulNBits' layout (glass_export/quantization.py); the semantics are the
torch references' (glass_ops/torch_ops.py), GatherFFNQ's int8 down projection included. Every
exported model carries a FunctionProto of the same domain and name, written with stock ONNX ops, so
a stock onnxruntime runs it; a registered native kernel (libglass_ort_ops.so) takes precedence. The
functions behave like the native kernels: a negative index is an error (moved out of range so
Gather refuses it) and a repeated index counts its neuron once per occurrence.
"""

from __future__ import annotations

import itertools

import onnx
import onnxscript
from onnx import TensorProto, helper
from onnxscript import FLOAT, INT64

from .torch_ops import DOWN_GROUP

DOMAIN = "glass"
OPSET_VERSION = 1
OP_TYPE = "GatherFFN"
GATHER_FFN_Q = "GatherFFNQ"
FFN_DOWN_Q = "FFNDownQ"
glass_opset = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)


def _translate_gather_ffn(x: FLOAT, w_gate_up: FLOAT, w_down_t: FLOAT, idx: INT64, activation: int) -> FLOAT:
    return glass_opset.GatherFFN(x, w_gate_up, w_down_t, idx, activation=activation)


def translation_table() -> dict:
    """torch.ops.glass.gather_ffn -> glass.GatherFFN, for torch.onnx.export."""
    import torch

    import glass_ops  # noqa: F401  (defines torch.ops.glass)

    return {torch.ops.glass.gather_ffn.default: onnxscript.script(glass_opset)(_translate_gather_ffn)}


class _Body:
    """Nodes of one function body, with fresh value names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self._names = itertools.count()

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        names = [f"v{next(self._names)}" for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=TensorProto.INT64) -> str:
        values = value if isinstance(value, list) else [value]
        dims = [len(values)] if isinstance(value, list) else []
        return self.op("Constant", value=helper.make_tensor("c", dtype, dims, values))

    def shape_slice(self, value: str, start: int, end: int | None = None) -> str:
        attrs = {"start": start} if end is None else {"start": start, "end": end}
        return self.op("Shape", value, **attrs)

    def checked(self, idx: str) -> str:
        """A negative index becomes one far out of range: Gather then refuses it, as the kernels do."""
        return self.op("Where", self.op("Less", idx, self.const(0)), self.op("Add", idx, self.const(1 << 40)), idx)

    def centred_codes(self, codes: str, bits: int) -> str:
        """codes [..., blocks, blob] uint8 -> u - Z as float [..., blocks, group]."""
        if bits == 4:
            low = self.op("BitwiseAnd", codes, self.const(15, TensorProto.UINT8))
            high = self.op("BitShift", codes, self.const(4, TensorProto.UINT8), direction="RIGHT")
            pairs = self.op("Concat", self.op("Unsqueeze", low, self.const([-1])),
                            self.op("Unsqueeze", high, self.const([-1])), axis=-1)
            codes = self.op("Reshape", pairs, self.op("Concat", self.shape_slice(codes, 0, -1), self.const([-1]), axis=0))
        return self.op("Sub", self.op("Cast", codes, to=TensorProto.FLOAT),
                       self.const(float(1 << (bits - 1)), TensorProto.FLOAT))

    def dequantize(self, codes: str, scales: str, bits: int) -> str:
        """codes [..., blocks, blob] uint8, scales [..., blocks] -> float [..., blocks * group]."""
        blocks = self.op("Mul", self.centred_codes(codes, bits), self.op("Unsqueeze", scales, self.const([-1])))
        return self.op("Reshape", blocks, self.op("Concat", self.shape_slice(blocks, 0, -2), self.const([-1]), axis=0))

    def int8_blocks(self, blocks: str, axis: int) -> tuple[str, str]:
        """MLAS CompInt8's quantisation along axis (torch_ops.int8_blocks): (q, amax / 127)."""
        amax = self.op("ReduceMax", self.op("Abs", blocks), self.const([axis]), keepdims=1)
        zero = self.const(0.0, TensorProto.FLOAT)
        inverse = self.op("Where", self.op("Equal", amax, zero), zero,
                          self.op("Div", self.const(127.0, TensorProto.FLOAT), amax))
        return self.op("Round", self.op("Mul", blocks, inverse)), self.op("Div", amax, self.const(127.0, TensorProto.FLOAT))

    def quantize_activations(self, x: str, group: int) -> str:
        """MLAS CompInt8's view of x (glass_export.quantization.fake_quantize_activations)."""
        blocks = self.op("Reshape", x, self.op("Concat", self.shape_slice(x, 0, -1), self.const([-1, group]), axis=0))
        q, scale = self.int8_blocks(blocks, -1)
        return self.op("Reshape", self.op("Mul", q, scale), self.op("Shape", x))

    def decode_down_int8(self, z: str, codes: str, scales: str, bits: int, group: int) -> str:
        """torch_ops.decode_down_int8: z [T, k], the kept down rows' codes [k, blocks, blob] and
        scales [k, blocks] -> y [T, d]."""
        pad = self.op("Mod", self.op("Sub", self.const(DOWN_GROUP), self.op("Mod", self.shape_slice(scales, 0, 1),
                                                                             self.const(DOWN_GROUP))),
                      self.const(DOWN_GROUP))  # [1]: zero neurons that fill the last group
        c = self.op("Mul", self.op("Unsqueeze", z, self.const([-1])), scales)  # [T, k, blocks]
        c = self.op("Pad", c, self.op("Concat", self.const([0, 0, 0, 0]), pad, self.const([0]), axis=0))
        groups = self.op("Reshape", c, self.op("Concat", self.const([0, -1, DOWN_GROUP]), self.shape_slice(scales, 1),
                                               axis=0))  # [T, J, 32, blocks]
        q, t = self.int8_blocks(groups, 2)
        centred = self.op("Pad", self.centred_codes(codes, bits),
                          self.op("Concat", self.const([0, 0, 0]), pad, self.const([0, 0]), axis=0))
        centred = self.op("Reshape", centred, self.op("Concat", self.const([-1, DOWN_GROUP]), self.shape_slice(scales, 1),
                                                      self.const([group]), axis=0))  # [J, 32, blocks, group]
        sums = self.op("Einsum", q, centred, equation="tjcn,jcnb->tjnb")  # exact: integers below 2^24
        y = self.op("Einsum", self.op("Squeeze", t, self.const([2])), sums, equation="tjn,tjnb->tnb")
        return self.op("Reshape", y, self.op("Concat", self.const([0]), self.const([-1]), axis=0))

    def activate(self, g: str, activation: int) -> str:
        if activation == 0:
            return self.op("Mul", g, self.op("Sigmoid", g))
        return self.op("Gelu", g, approximate="tanh")

    def gated(self, x: str, gate: str, up: str, activation: int) -> str:
        """x [..., d]; gate, up [k, d] -> z = act(x gate^T) * (x up^T) [..., k]."""
        g = self.op("MatMul", x, self.op("Transpose", gate, perm=[1, 0]))
        u = self.op("MatMul", x, self.op("Transpose", up, perm=[1, 0]))
        return self.op("Mul", self.activate(g, activation), u)

    def ffn(self, x: str, gate: str, up: str, down: str, activation: int) -> str:
        """x [..., d]; gate, up, down [k, d] -> [..., d]."""
        return self.op("MatMul", self.gated(x, gate, up, activation), down)


def fallback_function(op_type: str, activation: int, onnx_opset: int, bits: int | None = None,
                      group_size: int = 32, accuracy_level: int = 4) -> onnx.FunctionProto:
    """The stock-ops body of one glass op, specialised to the model's activation and scheme."""
    body = _Body()
    if op_type == OP_TYPE:
        inputs = ["x", "w_gate_up", "w_down_t", "idx"]
        attributes = ["activation"]
        idx = body.checked("idx")
        kept = body.op("Gather", "w_gate_up", idx, axis=0)  # [k, 2, d]
        gate = body.op("Gather", kept, body.const(0), axis=1)
        up = body.op("Gather", kept, body.const(1), axis=1)
        y = body.ffn("x", gate, up, body.op("Gather", "w_down_t", idx, axis=0), activation)
    elif op_type == GATHER_FFN_Q:
        inputs = ["x", "gate_up", "gate_up_scales", "down", "down_scales", "idx"]
        attributes = ["activation", "bits", "block_size", "accuracy_level"]
        idx = body.checked("idx")
        # rows 2i, 2i + 1 of neuron i as [m, 2, ...]
        pairs = body.op("Reshape", "gate_up", body.op("Concat", body.const([-1, 2]), body.shape_slice("gate_up", 1),
                                                      axis=0))
        pair_scales = body.op("Reshape", "gate_up_scales", body.op("Concat", body.const([-1, 2]),
                                                                   body.shape_slice("gate_up_scales", 1), axis=0))
        kept = body.dequantize(body.op("Gather", pairs, idx, axis=0), body.op("Gather", pair_scales, idx, axis=0), bits)
        down_codes = body.op("Gather", "down", idx, axis=0)
        down_scales = body.op("Gather", "down_scales", idx, axis=0)
        if accuracy_level == 4:
            x = body.op("Reshape", body.quantize_activations("x", group_size),
                        body.op("Concat", body.const([-1]), body.shape_slice("x", -1), axis=0))  # [T, d]
            z = body.gated(x, body.op("Gather", kept, body.const(0), axis=1), body.op("Gather", kept, body.const(1), axis=1),
                           activation)
            y = body.op("Reshape", body.decode_down_int8(z, down_codes, down_scales, bits, group_size),
                        body.op("Shape", "x"))
        else:
            z = body.gated("x", body.op("Gather", kept, body.const(0), axis=1),
                           body.op("Gather", kept, body.const(1), axis=1), activation)
            y = body.op("MatMul", z, body.dequantize(down_codes, down_scales, bits))
    elif op_type == FFN_DOWN_Q:
        inputs = ["z", "down", "down_scales"]
        attributes = ["bits", "block_size"]
        y = body.op("MatMul", "z", body.dequantize("down", "down_scales", bits))
    else:
        raise ValueError(f"no fallback for {op_type}")
    body.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return helper.make_function(DOMAIN, op_type, inputs, ["y"], body.nodes,
                                [helper.make_opsetid("", onnx_opset)], attributes)


def add_function_fallback(model: onnx.ModelProto) -> onnx.ModelProto:
    """Append the GatherFFN function body matching the activation the model's nodes use
    (for graphs from torch.onnx.export, which carry glass.GatherFFN nodes but no body)."""
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
    model.functions.append(fallback_function(OP_TYPE, activations.pop(), onnx_opset))
    if DOMAIN not in {entry.domain for entry in model.opset_import}:
        model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    return model


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
