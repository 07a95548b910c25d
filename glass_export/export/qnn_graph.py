"""The NPU decode graph: static shapes and stock ONNX operators only, for ONNX Runtime's QNN (HTP) EP.

Qualcomm's HTP compiles a graph once for fixed shapes and runs quantised (QDQ) operators; custom
ops and ONNX Runtime's CPU contrib ops (GroupQueryAttention, MatMulNBits, the glass ops) cannot
enter its partition. So this graph spells a decode step out of operators the HTP has, from the
same DecoderSpec as the CPU graphs (onnx_graph.py):

- the KV cache is a static input of max_seq_len positions per layer and kind; the step returns only
  its new key and value ([1, kv_heads, 1, head_dim]), which the runner writes at `position_ids`,
- attention over [past slots, this token] with an `attention_mask` input (1 for the slots in use),
  turned into a bias of -MASKED_SCORE for the others: small enough to quantise with fine steps
  (uint16 over the scores' range), large enough that a masked slot's softmax weight is nil,
- rotary cos / sin gathered from constant tables at `position_ids`,
- GLASS's FFN as stock ops over the neuron-contiguous weights: Gather of the kept rows of
  W_gate_up [m, 2, d] and W_down^T [m, d] by `glass_indices`, then MatMuls: a kept neuron is
  still one contiguous read,
- every other projection (q/k/v, o, the LM head, a dense twin's FFN) as a 1x1 Conv, whose weights
  the HTP quantises per output channel (MatMul weights only per tensor).

The graph is float32; qnn_export.py quantises it (QDQ) with activation ranges from calibration.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .onnx_graph import DecoderGraph, GraphPlan, WeightStore


# What a masked slot's attention score becomes: exp(-64) ~ 1e-28 of an unmasked slot with score 0, and
# a range the activation quantiser resolves (a -1e9 bias would make every score's uint16 step ~1.5e4).
MASKED_SCORE = 64.0


class StaticDecodeGraph(DecoderGraph):
    """DecoderGraph with every fused or custom operator replaced by stock ones, decode only."""

    def __init__(self, plan: GraphPlan, weights: WeightStore):
        if plan.quant.quantized:
            raise ValueError("internal: the static graph is float32; QDQ quantisation comes after it")
        super().__init__(plan, weights, "decode")
        self.position: str | None = None
        self.bias: str | None = None  # [1, 1, 1, S + 1]: 0 for the slots in use, -MASKED_SCORE for the others

    # --- weights ----------------------------------------------------------------------------------

    def linear(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None = None) -> str:
        """x [1, 1, K] . weight [N, K]^T (+ bias) as a 1x1 Conv: the HTP quantises Conv weights per output
        channel (one scale per row of weight), MatMul weights only per tensor."""
        n, k = weight.shape
        g = self.g
        image = g.op("Reshape", [x, g.const([1, k, 1, 1])])
        inputs = [image, g.weight(f"{name}.conv_weight", weight.reshape(n, k, 1, 1))]
        if bias is not None:
            inputs.append(g.weight(f"{name}.bias", bias))
        return g.op("Reshape", [g.op("Conv", inputs), g.const([1, 1, n])])

    def lm_head_logits(self, h: str) -> str:
        """Tied or not, the head is its own per-channel Conv weight (a shared tensor would be a runtime Transpose)."""
        spec = self.spec
        return self.linear(h, "lm_head", spec.embedding if spec.tied else spec.lm_head)

    # --- norms ------------------------------------------------------------------------------------

    def skip_rms_norm(self, x: str, skip: str, weight: np.ndarray, name: str) -> tuple[str, str]:
        total = self.g.op("Add", [x, skip])
        return self.rms_norm(total, weight, name), total

    # --- attention --------------------------------------------------------------------------------

    def rotary(self, x: str, table: str) -> str:
        """Rotate-half rotary of x [1, heads, 1, head_dim] at this step's position."""
        spec, g = self.spec, self.g
        names = [f"rotary.{table}.{kind}_full.{self.plan.max_seq_len}" for kind in ("cos", "sin")]
        if names[0] not in g.weights.arrays:  # built once per table, read by every layer's q and k
            for name, half_table in zip(names, spec.rotary_cache(table, self.plan.max_seq_len)):
                g.weight(name, np.concatenate([half_table, half_table], axis=-1))
        cos, sin = (g.op("Gather", [g.weight(name), self.position], axis=0) for name in names)  # [1, 1, rotary_dim]
        half = spec.rotary_dim // 2
        rest = spec.head_dim - spec.rotary_dim
        if rest:
            rot, passthrough = g.op("Split", [x, g.const([spec.rotary_dim, rest])], outputs=2, axis=-1)
        else:
            rot, passthrough = x, None
        x1, x2 = g.op("Split", [rot, g.const([half, half])], outputs=2, axis=-1)
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        out = g.op("Add", [g.op("Mul", [rot, cos]), g.op("Mul", [rotated, sin])])
        return out if passthrough is None else g.op("Concat", [out, passthrough], axis=-1)

    def heads(self, x: str, heads: int) -> str:
        """[1, 1, heads * head_dim] -> [1, heads, 1, head_dim]"""
        per_head = self.g.op("Reshape", [x, self.g.const([1, 1, heads, self.spec.head_dim])])
        return self.g.op("Transpose", [per_head], perm=[0, 2, 1, 3])

    def attention(self, layer: int, h: str, past: tuple[str, str] | None, seqlens_k: str, total: str,
                  present: tuple[str, str]) -> str:
        spec, lw, g = self.spec, self.spec.layers[layer], self.g
        prefix = f"layers.{layer}.attn"
        qkv = self.linear(h, f"{prefix}.qkv_proj", lw.qkv, lw.qkv_bias)
        q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        q, k, v = g.op("Split", [qkv, g.const([q_size, kv_size, kv_size])], outputs=3, axis=-1)
        if lw.q_norm is not None:
            q = self.head_norm(q, spec.num_heads, lw.q_norm, f"{prefix}.q_norm")
            k = self.head_norm(k, spec.num_kv_heads, lw.k_norm, f"{prefix}.k_norm")
        q = self.rotary(self.heads(q, spec.num_heads), lw.rotary)
        k = self.rotary(self.heads(k, spec.num_kv_heads), lw.rotary)
        v = self.heads(v, spec.num_kv_heads)
        g.op("Identity", [k], [present[0]])
        g.op("Identity", [v], [present[1]])
        keys = g.op("Concat", [past[0], k], axis=2)  # [1, kv_heads, S + 1, head_dim]
        values = g.op("Concat", [past[1], v], axis=2)
        group = spec.num_heads // spec.num_kv_heads
        # query heads grouped under their kv head ([1, kv_heads, group, head_dim]): no repeated keys
        q = g.op("Reshape", [q, g.const([1, spec.num_kv_heads, group, spec.head_dim])])
        scores = g.op("MatMul", [q, g.op("Transpose", [keys], perm=[0, 1, 3, 2])])
        scores = g.op("Mul", [scores, g.const(spec.attention_scale, np.float32)])
        if spec.attention_softcap:
            scores = self.soft_cap(scores, spec.attention_softcap)
        probs = g.op("Softmax", [g.op("Add", [scores, self.bias])], axis=-1)
        out = g.op("MatMul", [probs, values])  # [1, kv_heads, group, head_dim]
        out = g.op("Reshape", [out, g.const([1, 1, q_size])])
        return self.linear(out, f"{prefix}.o_proj", lw.o)

    # --- FFN ----------------------------------------------------------------------------------------

    def gather_ffn(self, layer: int, h: str, indices: str) -> str:
        g, k, d = self.g, self.plan.k, self.spec.hidden_size
        gate_up, down_t = self._ffn_weights(layer)
        idx = g.op("Gather", [indices, g.const(layer)], axis=0)  # [k]
        rows = g.op("Reshape", [g.op("Gather", [gate_up, idx], axis=0), g.const([2 * k, d])])  # [2k, d]
        pairs = g.op("MatMul", [h, g.op("Transpose", [rows], perm=[1, 0])])  # [1, 1, 2k]
        gate, up = g.op("Split", [g.op("Reshape", [pairs, g.const([1, 1, k, 2])]), g.const([1, 1])], outputs=2,
                        axis=-1)
        z = g.op("Mul", [self.activation(g.op("Reshape", [gate, g.const([1, 1, k])])),
                         g.op("Reshape", [up, g.const([1, 1, k])])])
        return g.op("MatMul", [z, g.op("Gather", [down_t, idx], axis=0)])  # [1, 1, d]

    def dense_ffn(self, layer: int, h: str, record: bool) -> str:
        """The dense twin's FFN: the full gate, up and down projections (1x1 Convs, as every projection)."""
        ffn = self.spec.layers[layer].ffn
        prefix = f"layers.{layer}.mlp"
        gate = self.linear(h, f"{prefix}.gate_proj", ffn.gate.detach().float().numpy())
        up = self.linear(h, f"{prefix}.up_proj", ffn.up.detach().float().numpy())
        return self.linear(self.g.op("Mul", [self.activation(gate), up]), f"{prefix}.down_proj",
                           ffn.down.detach().float().numpy())

    # --- the graph ------------------------------------------------------------------------------------

    def build_decode(self) -> "StaticDecodeGraph":
        plan, spec, g = self.plan, self.spec, self.g
        ids = g.add_input("input_ids", TensorProto.INT64, [1, 1])
        self.position = g.add_input("position_ids", TensorProto.INT64, [1, 1])
        mask = g.add_input("attention_mask", TensorProto.FLOAT, [1, 1, 1, plan.max_seq_len + 1])
        self.bias = g.op("Mul", [g.op("Sub", [mask, g.const(1.0, np.float32)]), g.const(MASKED_SCORE, np.float32)])
        indices = g.add_input("glass_indices", TensorProto.INT64, [plan.num_layers, plan.k])
        past_names = self.kv_inputs()
        if plan.sparse_decode:
            ffn = lambda layer, h: self.gather_ffn(layer, h, indices)  # noqa: E731
        else:
            ffn = lambda layer, h: self.dense_ffn(layer, h, record=False)  # noqa: E731
        logits = self.decoder(ids, past_names, "", "", ffn)
        g.add_output(logits, "logits", TensorProto.FLOAT, [1, 1, spec.vocab_size])
        for layer in range(plan.num_layers):
            for kind in ("key", "value"):
                g.outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", TensorProto.FLOAT,
                                                               [1, spec.num_kv_heads, 1, spec.head_dim]))
        return self
