"""The two ONNX graphs of a GLASS artifact, built node by node from a DecoderSpec.

The graphs use ONNX Runtime's fused operators, as ONNX Runtime GenAI's model builder does, so a
decode step runs a few hundred nodes instead of thousands:

- GroupQueryAttention (q/k/v packed in one projection, rotary from cos/sin tables, q/k norms,
  soft-capping, the KV cache as past/present tensors),
- SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization for RMSNorm and the residuals,
- MatMulNBits for every quantised projection (the FFN's gate/up rows included), with
  GatherBlockQuantized for the embedding (one tensor with the LM head when they are tied),
- the glass ops for the FFN: `glass.GatherFFN` / `glass.GatherFFNQ` in decode, `glass.FFNDownQ`
  for the dense down projection of quantised prefill; each has a model-local function of stock
  ops (glass_ops.onnx_ops) so a stock onnxruntime runs the artifact too.

Prefill (input_ids [1, T]) -> logits [1, T, V], glass_local_scores [L, m], glass_indices [L, k],
present.N.key/value [1, kv_heads, T, head_dim]. The selection (ranks, fusion, top-k) is traced
from selection.py's own torch code, so eager PyTorch and the graph apply one definition.

Decode (input_ids [1, 1], position_ids [1, 1], glass_indices [L, k], past_key_values.N.*) ->
logits [1, 1, V], present.N.key/value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from glass_ops import onnx_ops
from glass_ops.torch_ops import ACTIVATION_CODES

from ..models.decoder import DecoderSpec
from ..quantization import QuantScheme, QuantizedRows, quantize_rows
from ..selection import SelectionConfig, random_selection, ranks_by_topk, select_with_ranks

OPSET = 21
MS_DOMAIN = "com.microsoft"


class WeightStore:
    """Initializers shared by both graphs, by name: each is written once to the weights file."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, name: str, array: np.ndarray) -> str:
        if name not in self.arrays:
            self.arrays[name] = np.array(array, order="C", copy=True)  # (ascontiguousarray makes 0-d arrays 1-d)
        return name


class GraphBuilder:
    """Nodes, graph inputs/outputs and the names of the shared initializers one graph uses."""

    def __init__(self, weights: WeightStore):
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.used: set[str] = set()
        self._count = 0

    def weight(self, name: str, array: np.ndarray | None = None) -> str:
        if array is not None:
            self.weights.add(name, array)
        self.used.add(name)
        return name

    def const(self, value, dtype=np.int64) -> str:
        array = np.asarray(value, dtype=dtype)
        name = f"const/{array.dtype}/{array.tolist()}".replace(" ", "")
        return self.weight(name, array)

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        self._count += 1
        names = outputs if isinstance(outputs, list) else [f"{op_type}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{op_type}_{self._count}", domain=domain,
                                           **attrs))
        return names[0] if len(names) == 1 else names

    def add_input(self, name: str, dtype, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def add_output(self, value: str, name: str, dtype, shape) -> None:
        self.op("Identity", [value], [name])
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def model(self, graph_name: str, functions: list[onnx.FunctionProto], tensor) -> onnx.ModelProto:
        """The graph as a ModelProto; tensor(name) makes each initializer (inline or external)."""
        initializers = [tensor(name) for name in sorted(self.used)]
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, initializers)
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
        if functions:
            opsets.append(helper.make_opsetid(onnx_ops.DOMAIN, onnx_ops.OPSET_VERSION))
        model = helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="glass-export")
        model.ir_version = 10
        return model


@dataclass
class GraphPlan:
    """What both graphs share: the model, the selection and the weight scheme."""

    spec: DecoderSpec
    selection: SelectionConfig
    global_rank: torch.Tensor | None
    quant: QuantScheme
    max_seq_len: int

    @property
    def num_layers(self) -> int:
        return len(self.spec.layers)

    @property
    def m(self) -> int:
        return self.spec.layers[0].ffn.gate.shape[0]

    @property
    def k(self) -> int:
        return self.selection.keep_count(self.m)

    @property
    def sparse_decode(self) -> bool:
        return self.selection.sparse_decode

    @property
    def stock_down(self) -> bool:
        """W_down as a stock MatMulNBits, quantised along m (quantised dense twins: they never gather; see
        quantization.quantize_model), not the glass layout."""
        return self.quant.quantized and not self.sparse_decode

    @property
    def activation_code(self) -> int:
        return ACTIVATION_CODES[self.spec.layers[0].ffn.activation]


class DecoderGraph:
    """Emits one graph (prefill or decode) of a GraphPlan."""

    def __init__(self, plan: GraphPlan, weights: WeightStore, kind: str):
        self.plan = plan
        self.spec = plan.spec
        self.quant = plan.quant
        self.g = GraphBuilder(weights)
        self.kind = kind
        self.local_stats: list[str] = []
        self.functions: dict[str, onnx.FunctionProto] = {}

    # --- weights ----------------------------------------------------------------------------

    def _quantized(self, name: str, weight: np.ndarray) -> tuple[str, str]:
        """Codes [N, blocks, blob] and scales [N, blocks] of weight [N, K], stored once."""
        codes_name, scales_name = f"{name}.qweight", f"{name}.scales"
        if codes_name not in self.g.weights.arrays:
            q: QuantizedRows = quantize_rows(weight, self.quant.bits, self.quant.group_size)
            self.g.weights.add(codes_name, q.blocked_codes())
            self.g.weights.add(scales_name, q.scales)
        return self.g.weight(codes_name), self.g.weight(scales_name)

    def linear(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None = None) -> str:
        """x [.., K] . weight [N, K]^T (+ bias)."""
        n, k = weight.shape
        if self.quant.quantized:
            codes, scales = self._quantized(name, weight)
            inputs = [x, codes, scales]
            if bias is not None:
                inputs += ["", "", self.g.weight(f"{name}.bias", bias)]
            return self.g.op("MatMulNBits", inputs, domain=MS_DOMAIN, K=k, N=n, bits=self.quant.bits,
                             block_size=self.quant.group_size, accuracy_level=self.quant.accuracy_level)
        # fp32: the file keeps the [N, K] layout; onnxruntime folds the transpose at load.
        y = self.g.op("MatMul", [x, self.g.op("Transpose", [self.g.weight(f"{name}.weight", weight)], perm=[1, 0])])
        return y if bias is None else self.g.op("Add", [y, self.g.weight(f"{name}.bias", bias)])

    def embedding(self, ids: str) -> str:
        spec = self.spec
        if self.quant.quantized:
            codes, scales = self._quantized("lm_head" if spec.tied else "embed_tokens", spec.embedding)
            rows = self.g.op("Reshape", [codes, self.g.const([spec.vocab_size, -1])])
            x = self.g.op("GatherBlockQuantized", [rows, ids, scales], domain=MS_DOMAIN, bits=self.quant.bits,
                          block_size=self.quant.group_size, gather_axis=0, quantize_axis=1)
        else:
            x = self.g.op("Gather", [self.g.weight("embed_tokens.weight", spec.embedding), ids], axis=0)
        if spec.embed_scale != 1.0:
            x = self.g.op("Mul", [x, self.g.const(spec.embed_scale, np.float32)])
        return x

    def lm_head(self, h: str) -> str:
        logits = self.lm_head_logits(h)
        return self.soft_cap(logits, self.spec.final_logit_softcap) if self.spec.final_logit_softcap else logits

    def lm_head_logits(self, h: str) -> str:
        """h . lm_head^T, before any soft-capping; a tied fp32 head reads the embedding tensor itself."""
        spec = self.spec
        weight = spec.embedding if spec.tied else spec.lm_head
        if spec.tied and not self.quant.quantized:
            return self.g.op("MatMul", [h, self.g.op("Transpose", [self.g.weight("embed_tokens.weight", weight)],
                                                      perm=[1, 0])])
        return self.linear(h, "lm_head", weight)

    def soft_cap(self, x: str, cap: float) -> str:
        """cap * tanh(x / cap)"""
        value = self.g.const(cap, np.float32)
        return self.g.op("Mul", [self.g.op("Tanh", [self.g.op("Div", [x, value])]), value])

    # --- norms and attention --------------------------------------------------------------------

    def rms_norm(self, x: str, weight: np.ndarray, name: str, epsilon: float | None = None) -> str:
        """epsilon: the model's own unless given."""
        return self.g.op("SimplifiedLayerNormalization", [x, self.g.weight(name, weight)], axis=-1,
                         epsilon=self.spec.rms_eps if epsilon is None else epsilon, stash_type=1)

    def skip_rms_norm(self, x: str, skip: str, weight: np.ndarray, name: str) -> tuple[str, str]:
        """(norm(x + skip), x + skip)"""
        outs = self.g.op("SkipSimplifiedLayerNormalization", [x, skip, self.g.weight(name, weight)],
                         outputs=[f"{name}/out", "", "", f"{name}/sum"], domain=MS_DOMAIN, epsilon=self.spec.rms_eps)
        return outs[0], outs[3]

    def head_norm(self, x: str, heads: int, weight: np.ndarray, name: str) -> str:
        """RMSNorm over each head's head_dim values of x [1, T, heads * head_dim]."""
        per_head = self.g.op("Reshape", [x, self.g.const([0, 0, heads, self.spec.head_dim])])
        return self.g.op("Reshape", [self.rms_norm(per_head, weight, name), self.g.const([0, 0, heads * self.spec.head_dim])])

    def attention(self, layer: int, h: str, past: tuple[str, str] | None, seqlens_k: str, total: str,
                  present: tuple[str, str]) -> str:
        spec, lw = self.spec, self.spec.layers[layer]
        prefix = f"layers.{layer}.attn"
        qkv = self.linear(h, f"{prefix}.qkv_proj", lw.qkv, lw.qkv_bias)
        if lw.q_norm is not None:  # onnxruntime's CPU GroupQueryAttention ignores its q/k norm inputs
            q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
            q, k, v = self.g.op("Split", [qkv, self.g.const([q_size, kv_size, kv_size])], outputs=3, axis=-1)
            q = self.head_norm(q, spec.num_heads, lw.q_norm, f"{prefix}.q_norm")
            k = self.head_norm(k, spec.num_kv_heads, lw.k_norm, f"{prefix}.k_norm")
            qkv_inputs = [q, k, v]
        else:
            qkv_inputs = [qkv, "", ""]  # packed
        cos, sin = spec.rotary_cache(lw.rotary, self.plan.max_seq_len)
        inputs = [*qkv_inputs, *(past or ("", "")), seqlens_k, total,
                  self.g.weight(f"rotary.{lw.rotary}.cos.{self.plan.max_seq_len}", cos),
                  self.g.weight(f"rotary.{lw.rotary}.sin.{self.plan.max_seq_len}", sin)]
        out = self.g.op("GroupQueryAttention", inputs, outputs=[f"{prefix}/out", *present], domain=MS_DOMAIN,
                        num_heads=spec.num_heads, kv_num_heads=spec.num_kv_heads, scale=spec.attention_scale,
                        do_rotary=1, rotary_interleaved=0, softcap=spec.attention_softcap, local_window_size=-1)
        return self.linear(out[0], f"{prefix}.o_proj", lw.o)

    # --- FFN ------------------------------------------------------------------------------------

    def _ffn_weights(self, layer: int) -> tuple[str, ...]:
        """The FFN's neuron-contiguous weights, stored once and read by both graphs."""
        from glass_ops import pack_ffn_weights

        ffn = self.spec.layers[layer].ffn
        gate_up, down_t = pack_ffn_weights(ffn.gate.detach().float(), ffn.up.detach().float(),
                                           ffn.down.detach().float())
        m, _, d = gate_up.shape
        prefix = f"layers.{layer}.mlp"
        if not self.quant.quantized:
            return (self.g.weight(f"{prefix}.w_gate_up", gate_up.numpy()),
                    self.g.weight(f"{prefix}.w_down_t", down_t.numpy()))
        gu_codes, gu_scales = self._quantized(f"{prefix}.gate_up", gate_up.reshape(2 * m, d).numpy())
        if self.plan.stock_down:  # W_down [d, m], quantised along m
            dn_codes, dn_scales = self._quantized(f"{prefix}.down_proj", down_t.numpy().T)
        else:
            dn_codes, dn_scales = self._quantized(f"{prefix}.down", down_t.numpy())
        return gu_codes, gu_scales, dn_codes, dn_scales

    def _function(self, op_type: str) -> None:
        if op_type not in self.functions:
            self.functions[op_type] = onnx_ops.fallback_function(
                op_type, self.plan.activation_code, OPSET, self.quant.bits if self.quant.quantized else None,
                self.quant.group_size, self.quant.accuracy_level)

    def dense_ffn(self, layer: int, h: str, record: bool) -> str:
        m = self.plan.m
        weights = self._ffn_weights(layer)
        if self.quant.quantized:
            gate_up = self.g.op("MatMulNBits", [h, weights[0], weights[1]], domain=MS_DOMAIN,
                                K=self.spec.hidden_size, N=2 * m, bits=self.quant.bits,
                                block_size=self.quant.group_size, accuracy_level=self.quant.accuracy_level)
        else:
            rows = self.g.op("Reshape", [weights[0], self.g.const([2 * m, self.spec.hidden_size])])
            gate_up = self.g.op("MatMul", [h, self.g.op("Transpose", [rows], perm=[1, 0])])
        pairs = self.g.op("Reshape", [gate_up, self.g.const([1, -1, m, 2])])
        gate, up = self.g.op("Split", [pairs, self.g.const([1, 1])], outputs=2, axis=-1)
        gate = self.g.op("Squeeze", [gate, self.g.const([-1])])
        up = self.g.op("Squeeze", [up, self.g.const([-1])])
        z = self.g.op("Mul", [self.activation(gate), up])  # [1, T, m]
        if record:
            self.local_stats.append(self.normalised_square_sum(z))
        if self.plan.stock_down:
            return self.g.op("MatMulNBits", [z, weights[2], weights[3]], domain=MS_DOMAIN, K=m, N=self.spec.hidden_size,
                             bits=self.quant.bits, block_size=self.quant.group_size,
                             accuracy_level=self.quant.accuracy_level)
        if self.quant.quantized:
            self._function(onnx_ops.FFN_DOWN_Q)
            return self.g.op(onnx_ops.FFN_DOWN_Q, [z, weights[2], weights[3]], domain=onnx_ops.DOMAIN,
                             bits=self.quant.bits, block_size=self.quant.group_size)
        return self.g.op("MatMul", [z, weights[1]])

    def gather_ffn(self, layer: int, h: str, indices: str) -> str:
        idx = self.g.op("Gather", [indices, self.g.const(layer)], axis=0)  # [k]
        weights = self._ffn_weights(layer)
        op_type = onnx_ops.GATHER_FFN_Q if self.quant.quantized else onnx_ops.OP_TYPE
        self._function(op_type)
        attrs = dict(activation=self.plan.activation_code)
        if self.quant.quantized:
            attrs.update(bits=self.quant.bits, block_size=self.quant.group_size,
                         accuracy_level=self.quant.accuracy_level)
        return self.g.op(op_type, [h, *weights, idx], domain=onnx_ops.DOMAIN, **attrs)

    def activation(self, gate: str) -> str:
        if self.spec.layers[0].ffn.activation == "silu":
            return self.g.op("Mul", [gate, self.g.op("Sigmoid", [gate])])
        return self.g.op("Gelu", [gate], approximate="tanh")

    def normalised_square_sum(self, z: str) -> str:
        """sum over tokens of (z_t / ||z_t||)^2 -> [m], in float64; a zero row contributes zero (glass_ops.torch_ops)."""
        z = self.g.op("Cast", [z], to=TensorProto.DOUBLE)
        norm = self.g.op("ReduceL2", [z, self.g.const([-1])], keepdims=1)
        safe = self.g.op("Where", [self.g.op("Greater", [norm, self.g.const(0.0, np.float64)]), norm,
                                   self.g.const(1.0, np.float64)])
        normed = self.g.op("Div", [z, safe])
        return self.g.op("ReduceSum", [self.g.op("Mul", [normed, normed]), self.g.const([0, 1])], keepdims=0)

    # --- the graphs -----------------------------------------------------------------------------

    def decoder(self, ids: str, past_names: list[str] | None, seqlens_k: str, total: str, ffn) -> str:
        spec = self.spec
        x = self.embedding(ids)
        h = self.rms_norm(x, spec.layers[0].input_norm, "layers.0.input_norm")
        residual = x
        for layer, lw in enumerate(spec.layers):
            past = None if past_names is None else (past_names[2 * layer], past_names[2 * layer + 1])
            present = (f"present.{layer}.key", f"present.{layer}.value")
            attn = self.attention(layer, h, past, seqlens_k, total, present)
            if spec.sandwich_norms:
                attn = self.rms_norm(attn, lw.post_attention_norm, f"layers.{layer}.post_attention_norm")
                h, residual = self.skip_rms_norm(attn, residual, lw.pre_ffn_norm, f"layers.{layer}.pre_ffn_norm")
            else:
                h, residual = self.skip_rms_norm(attn, residual, lw.post_attention_norm,
                                                 f"layers.{layer}.post_attention_norm")
            y = ffn(layer, h)
            if spec.sandwich_norms:
                y = self.rms_norm(y, lw.post_ffn_norm, f"layers.{layer}.post_ffn_norm")
            if layer + 1 < len(spec.layers):
                h, residual = self.skip_rms_norm(y, residual, spec.layers[layer + 1].input_norm,
                                                 f"layers.{layer + 1}.input_norm")
            else:
                h, _ = self.skip_rms_norm(y, residual, spec.final_norm, "final_norm")
        return self.lm_head(h)

    def kv_inputs(self) -> list[str]:
        """The KV cache buffers [1, kv_heads, max_seq_len, head_dim] per layer: GroupQueryAttention writes the
        new positions into them in place when each present output is bound to its past input's memory."""
        spec, names = self.spec, []
        for layer in range(len(spec.layers)):
            for kv in ("key", "value"):
                names.append(self.g.add_input(f"past_key_values.{layer}.{kv}", TensorProto.FLOAT,
                                              [1, spec.num_kv_heads, self.plan.max_seq_len, spec.head_dim]))
        return names

    def kv_outputs(self) -> None:
        spec = self.spec
        for layer in range(len(spec.layers)):
            for kv in ("key", "value"):
                self.g.outputs.append(helper.make_tensor_value_info(
                    f"present.{layer}.{kv}", TensorProto.FLOAT,
                    [1, spec.num_kv_heads, self.plan.max_seq_len, spec.head_dim]))

    def build_prefill(self) -> "DecoderGraph":
        plan, g = self.plan, self.g
        ids = g.add_input("input_ids", TensorProto.INT64, [1, "sequence_length"])
        past_names = self.kv_inputs()
        length = g.op("Gather", [g.op("Shape", [ids]), g.const(1)], axis=0)  # T, int64 scalar
        total = g.op("Cast", [length], to=TensorProto.INT32)
        seqlens_k = g.op("Reshape", [g.op("Cast", [g.op("Sub", [length, g.const(1)])], to=TensorProto.INT32),
                                     g.const([1])])
        record = plan.selection.needs_local_stats
        logits = self.decoder(ids, past_names, seqlens_k, total, lambda layer, h: self.dense_ffn(layer, h, record))
        if record:
            stacked = g.op("Concat", [g.op("Unsqueeze", [s, g.const([0])]) for s in self.local_stats], axis=0)
            local = g.op("Cast", [g.op("Sqrt", [stacked])], to=TensorProto.FLOAT)
        else:
            local = g.op("ConstantOfShape", [g.const([plan.num_layers, plan.m])],
                         value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
        indices = self.selection(local)
        g.add_output(logits, "logits", TensorProto.FLOAT, [1, "sequence_length", self.spec.vocab_size])
        g.add_output(local, "glass_local_scores", TensorProto.FLOAT, [plan.num_layers, plan.m])
        g.add_output(indices, "glass_indices", TensorProto.INT64, [plan.num_layers, plan.k])
        self.kv_outputs()
        return self

    def build_decode(self) -> "DecoderGraph":
        plan, spec, g = self.plan, self.spec, self.g
        ids = g.add_input("input_ids", TensorProto.INT64, [1, 1])
        position = g.add_input("position_ids", TensorProto.INT64, [1, 1])
        indices = g.add_input("glass_indices", TensorProto.INT64, [plan.num_layers, plan.k])
        past_names = self.kv_inputs()
        past_length = g.op("Reshape", [position, g.const([1])])
        seqlens_k = g.op("Cast", [past_length], to=TensorProto.INT32)
        total = g.op("Cast", [g.op("Add", [g.op("Reshape", [position, g.const([])]), g.const(1)])],
                     to=TensorProto.INT32)
        if plan.sparse_decode:
            ffn = lambda layer, h: self.gather_ffn(layer, h, indices)  # noqa: E731
        else:
            ffn = lambda layer, h: self.dense_ffn(layer, h, record=False)  # noqa: E731
        logits = self.decoder(ids, past_names, seqlens_k, total, ffn)
        g.add_output(logits, "logits", TensorProto.FLOAT, [1, 1, spec.vocab_size])
        self.kv_outputs()
        return self

    def selection(self, local: str) -> str:
        """The kept indices [L, k]: selection.py's torch code, traced once and spliced in."""
        plan, g = self.plan, self.g
        config = plan.selection
        if config.method == "random":
            return g.weight("glass.random_indices",
                            random_selection(plan.num_layers, plan.m, plan.k, config.seed).numpy())
        if not config.needs_local_stats:  # dense, or lambda 0: the prior alone fixes the mask
            fixed = select_with_ranks(config, None, plan.global_rank, plan.m, plan.num_layers)
            return g.weight(f"glass.static_indices.{config.method}.{plan.k}", fixed.numpy())
        return splice_selection(g, local, config, plan.global_rank, plan.m, plan.num_layers)


class _Selection(torch.nn.Module):
    def __init__(self, config: SelectionConfig, global_rank: torch.Tensor | None, m: int, num_layers: int):
        super().__init__()
        self.config, self.m, self.num_layers = config, m, num_layers
        self.global_rank = None if global_rank is None else global_rank.to(torch.int64)

    def forward(self, local):
        return select_with_ranks(self.config, local, self.global_rank, self.m, self.num_layers, rank_fn=ranks_by_topk)


def splice_selection(g: GraphBuilder, local: str, config: SelectionConfig, global_rank, m: int,
                     num_layers: int) -> str:
    """Export the selection module with torch.onnx and copy its nodes into g."""
    program = torch.onnx.export(_Selection(config, global_rank, m, num_layers).eval(),
                                (torch.rand(num_layers, m),), dynamo=True, optimize=True, verbose=False, opset_version=OPSET,
                                input_names=["local"], output_names=["indices"])
    sub = program.model_proto
    rename = {"local": local}

    def renamed(name: str) -> str:
        if not name:
            return name
        if name not in rename:
            rename[name] = f"selection/{name}"
        return rename[name]

    for init in sub.graph.initializer:
        g.weight(renamed(init.name), onnx.numpy_helper.to_array(init))
    for node in sub.graph.node:
        copy_node = onnx.NodeProto()
        copy_node.CopyFrom(node)
        copy_node.name = f"selection/{node.name}"
        del copy_node.input[:]
        copy_node.input.extend(renamed(n) for n in node.input)
        del copy_node.output[:]
        copy_node.output.extend(renamed(n) for n in node.output)
        del copy_node.metadata_props[:]
        g.nodes.append(copy_node)
    return renamed("indices")


INLINE_LIMIT = 1024  # bytes: smaller tensors stay inside the graph file, as onnx.save does


def write_graphs(plan: GraphPlan, directory, files: dict[str, str], data_name: str) -> dict:
    """Build both graphs and write them with one shared weights file, each tensor once.

    files: {"prefill": file name, "decode": file name}, or one of them alone. Returns byte counts, node
    counts and the glass ops used, for the manifest.
    """
    weights = WeightStore()
    builders = {"prefill": lambda: DecoderGraph(plan, weights, "prefill").build_prefill(),
                "decode": lambda: DecoderGraph(plan, weights, "decode").build_decode()}
    return save_graphs({role: builders[role]() for role in files}, weights, directory, files, data_name)


def save_graphs(graphs: dict[str, DecoderGraph], weights: WeightStore, directory, files: dict[str, str],
                data_name: str) -> dict:
    """Write built graphs (role -> graph) into files[role], their large initializers once into data_name."""
    from pathlib import Path

    directory = Path(directory)
    offsets: dict[str, tuple[int, int]] = {}
    referenced = 0
    with open(directory / data_name, "wb") as data:
        for name in sorted(set().union(*(graph.g.used for graph in graphs.values()))):
            array = weights.arrays[name]
            if array.nbytes < INLINE_LIMIT:
                continue
            align = 4096 if array.nbytes >= 1 << 20 else 64
            data.write(b"\0" * ((-data.tell()) % align))
            offsets[name] = (data.tell(), array.nbytes)
            data.write(array.tobytes())
        written = data.tell()

    def tensor(name: str) -> onnx.TensorProto:
        array = weights.arrays[name]
        if name not in offsets:
            return onnx.numpy_helper.from_array(array, name)
        proto = onnx.TensorProto(name=name, dims=array.shape, data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        proto.data_location = onnx.TensorProto.EXTERNAL
        offset, length = offsets[name]
        for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
            proto.external_data.append(onnx.StringStringEntryProto(key=key, value=value))
        return proto

    for role, graph in graphs.items():
        referenced += sum(weights.arrays[n].nbytes for n in graph.g.used if n in offsets)
        model = graph.g.model(f"glass_{role}", list(graph.functions.values()), tensor)
        onnx.save(model, str(directory / files[role]))
    return {"bytes_written": written, "bytes_referenced": referenced,
            "nodes": {role: len(graph.g.nodes) for role, graph in graphs.items()},
            "custom_ops": sorted(set().union(*(graph.functions for graph in graphs.values())))}
