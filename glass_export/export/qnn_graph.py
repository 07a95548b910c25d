"""The NPU graphs: static shapes and stock ONNX operators only, for ONNX Runtime's QNN (HTP) EP.

Qualcomm's HTP compiles a graph once for fixed shapes and runs quantised (QDQ) operators; custom
ops and ONNX Runtime's CPU contrib ops (GroupQueryAttention, MatMulNBits, the glass ops) cannot
enter its partition. So these graphs spell the model out of operators the HTP has, from the same
DecoderSpec as the CPU graphs (onnx_graph.py):

- prefill, one graph per prompt bucket of T tokens: the prompt right-padded to T, an
  `attention_mask` [1, T] (1 for the prompt's tokens) that keeps the padding out of the local
  statistics, causal attention within the bucket (so no prompt token sees a pad), the logits of the
  prompt's last token only (`last_position`), and each layer's local scores, sqrt(sum over the
  prompt's tokens of (z_t / ||z_t||)^2), as its own output (each gets its own quantisation range);
  the normalisation is an RMSNorm of z, which the HTP computes without a quantised division,
- selection, a small float graph for the CPU: the layers' local scores [L, m] -> the kept indices
  [L, k], selection.py's code spliced in as in the CPU prefill graph,
- decode: the KV cache is a static input of max_seq_len positions per layer and kind; the step
  returns only its new key and value ([1, kv_heads, 1, head_dim]), which the runner writes at
  `position_ids`; attention over [past slots, this token] with an `attention_mask` input (1 for the
  slots in use),
- masked attention scores get a bias of -MASKED_SCORE: small enough to quantise with fine steps
  (uint16 over the scores' range), large enough that a masked slot's softmax weight is nil,
- rotary cos / sin: constant tables (prefill: positions 0..T-1; decode: gathered at `position_ids`),
- GLASS's FFN in decode as stock ops over the neuron-contiguous weights: Gather of the kept rows of
  W_gate_up [m, 2, d] and W_down^T [m, d] by `glass_indices`, then MatMuls: a kept neuron is still
  one contiguous read,
- every other projection (q/k/v, o, the LM head, the prefill's and a dense twin's FFN) as a 1x1 Conv
  over the tokens as a batch, whose weights the HTP quantises per output channel (MatMul weights only
  per tensor).

The graphs are float32; qnn_export.py quantises them (QDQ) with activation ranges from calibration.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .onnx_graph import DecoderGraph, GraphPlan, WeightStore


# What a masked slot's attention score becomes: exp(-64) ~ 1e-28 of an unmasked slot with score 0, and
# a range the activation quantiser resolves (a -1e9 bias would make every score's uint16 step ~1.5e4).
MASKED_SCORE = 64.0
# The local scores' RMSNorm epsilon: a zero row stays zero instead of 0 / 0, and any other row moves by
# a relative 1e-12 / mean(z^2), far below float32's resolution for real activations.
LOCAL_SCORE_EPS = 1e-12


class StaticGraph(DecoderGraph):
    """DecoderGraph with every fused or custom operator replaced by stock ones: build_prefill(bucket),
    build_decode() or build_selection(), one per instance."""

    def __init__(self, plan: GraphPlan, weights: WeightStore, kind: str):
        if plan.quant.quantized:
            raise ValueError("internal: the static graphs are float32; QDQ quantisation comes after them")
        super().__init__(plan, weights, kind)
        self.tokens = 1  # T: the tokens this graph computes at once
        self.position: str | None = None  # decode: [1, 1] int64
        self.bias: str | None = None  # the attention scores' mask bias: 0 where allowed, -MASKED_SCORE elsewhere
        self.last_position: str | None = None  # prefill: [1] int64, the prompt's last token
        self.token_mask: str | None = None  # prefill: [1, T, 1], 1 for the prompt's tokens

    # --- weights ----------------------------------------------------------------------------------

    def linear(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None = None) -> str:
        """x [1, T, K] . weight [N, K]^T (+ bias) as a 1x1 Conv over the T tokens as a batch: the HTP
        quantises Conv weights per output channel (one scale per row of weight), MatMul weights only per
        tensor."""
        n, k = weight.shape
        g = self.g
        image = g.op("Reshape", [x, g.const([self.tokens, k, 1, 1])])
        inputs = [image, g.weight(f"{name}.conv_weight", weight.reshape(n, k, 1, 1))]
        if bias is not None:
            inputs.append(g.weight(f"{name}.bias", bias))
        return g.op("Reshape", [g.op("Conv", inputs), g.const([1, self.tokens, n])])

    def lm_head_logits(self, h: str) -> str:
        """Tied or not, the head is its own per-channel Conv weight (a shared tensor would be a runtime
        Transpose); prefill computes it for the prompt's last token only."""
        spec = self.spec
        if self.last_position is not None:
            h = self.g.op("Gather", [h, self.last_position], axis=1)  # [1, 1, d]
            tokens, self.tokens = self.tokens, 1
            logits = self.linear(h, "lm_head", spec.embedding if spec.tied else spec.lm_head)
            self.tokens = tokens
            return logits
        return self.linear(h, "lm_head", spec.embedding if spec.tied else spec.lm_head)

    # --- norms ------------------------------------------------------------------------------------

    def skip_rms_norm(self, x: str, skip: str, weight: np.ndarray, name: str) -> tuple[str, str]:
        total = self.g.op("Add", [x, skip])
        return self.rms_norm(total, weight, name), total

    # --- attention --------------------------------------------------------------------------------

    def rotary(self, x: str, table: str) -> str:
        """Rotate-half rotary of x [1, heads, T, head_dim] at its positions (prefill: 0..T-1; decode:
        position_ids)."""
        spec, g = self.spec, self.g
        names = [f"rotary.{table}.{kind}_full.{self.plan.max_seq_len}" for kind in ("cos", "sin")]
        if names[0] not in g.weights.arrays:  # built once per table, read by every layer's q and k
            for name, half_table in zip(names, spec.rotary_cache(table, self.plan.max_seq_len)):
                g.weights.add(name, np.concatenate([half_table, half_table], axis=-1))
        if self.position is not None:
            cos, sin = (g.op("Gather", [g.weight(name), self.position], axis=0) for name in names)  # [1, 1, rotary_dim]
        else:
            cos, sin = (g.weight(f"{name}[:{self.tokens}]", g.weights.arrays[name][: self.tokens]) for name in names)
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
        """[1, T, heads * head_dim] -> [1, heads, T, head_dim]"""
        per_head = self.g.op("Reshape", [x, self.g.const([1, self.tokens, heads, self.spec.head_dim])])
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
        group = spec.num_heads // spec.num_kv_heads
        if past is not None:  # decode: [past slots, this token]
            keys = g.op("Concat", [past[0], k], axis=2)  # [1, kv_heads, S + 1, head_dim]
            values = g.op("Concat", [past[1], v], axis=2)
            # query heads grouped under their kv head ([1, kv_heads, group, head_dim]): no repeated keys
            q = g.op("Reshape", [q, g.const([1, spec.num_kv_heads, group, spec.head_dim])])
        else:  # prefill: the bucket's own tokens; each kv head repeated for its query heads (4-D throughout)
            keys, values = (self.repeat_kv(t, group) for t in (k, v))  # [1, heads, T, head_dim]
        scores = g.op("MatMul", [q, g.op("Transpose", [keys], perm=[0, 1, 3, 2])])
        scores = g.op("Mul", [scores, g.const(spec.attention_scale, np.float32)])
        if spec.attention_softcap:
            scores = self.soft_cap(scores, spec.attention_softcap)
        probs = g.op("Softmax", [g.op("Add", [scores, self.bias])], axis=-1)
        out = g.op("MatMul", [probs, values])  # decode [1, kv_heads, group, head_dim]; prefill [1, heads, T, head_dim]
        if past is None:
            out = g.op("Transpose", [out], perm=[0, 2, 1, 3])
        out = g.op("Reshape", [out, g.const([1, self.tokens, q_size])])
        return self.linear(out, f"{prefix}.o_proj", lw.o)

    def repeat_kv(self, x: str, group: int) -> str:
        """[1, kv_heads, T, head_dim] -> [1, kv_heads * group, T, head_dim], each kv head `group` times."""
        if group == 1:
            return x
        g, spec = self.g, self.spec
        flat = g.op("Reshape", [x, g.const([1, spec.num_kv_heads, 1, self.tokens * spec.head_dim])])
        tiled = g.op("Tile", [flat, g.const([1, 1, group, 1])])
        return g.op("Reshape", [tiled, g.const([1, spec.num_heads, self.tokens, spec.head_dim])])

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
        """The full gate, up and down projections (1x1 Convs, as every projection); record: the layer's
        local scores (prefill)."""
        ffn = self.spec.layers[layer].ffn
        prefix = f"layers.{layer}.mlp"
        gate = self.linear(h, f"{prefix}.gate_proj", ffn.gate.detach().float().numpy())
        up = self.linear(h, f"{prefix}.up_proj", ffn.up.detach().float().numpy())
        z = self.g.op("Mul", [self.activation(gate), up])  # [1, T, m]
        if record:
            self.local_stats.append(self.local_scores(z))
        return self.linear(z, f"{prefix}.down_proj", ffn.down.detach().float().numpy())

    def local_scores(self, z: str) -> str:
        """[m]: sqrt(sum over the prompt's tokens of (z_t / ||z_t||)^2). z_t / ||z_t|| is an RMSNorm of z_t
        divided by sqrt(m): the HTP's own normalisation, no quantised division (a zero row stays zero)."""
        g, m = self.g, self.plan.m
        unit = g.op("Mul", [self.rms_norm(z, np.ones(m, np.float32), "local_scores.unit_weight",
                                          epsilon=LOCAL_SCORE_EPS),
                            g.const(1.0 / np.sqrt(m), np.float32)])
        masked = g.op("Mul", [g.op("Mul", [unit, unit]), self.token_mask])
        return g.op("Sqrt", [g.op("ReduceSum", [masked, g.const([0, 1])], keepdims=0)])

    # --- the graphs -------------------------------------------------------------------------------------

    def causal_bias(self) -> str:
        """[1, 1, T, T]: 0 on and below the diagonal, -MASKED_SCORE above (a token sees itself and earlier)."""
        above = np.triu(np.ones((self.tokens, self.tokens), np.float32), k=1)
        return self.g.weight(f"prefill.causal_bias.{self.tokens}", (-MASKED_SCORE * above)[None, None])

    def build_prefill(self, bucket: int) -> "StaticGraph":
        plan, spec, g = self.plan, self.spec, self.g
        self.tokens = bucket
        ids = g.add_input("input_ids", TensorProto.INT64, [1, bucket])
        mask = g.add_input("attention_mask", TensorProto.FLOAT, [1, bucket])
        self.last_position = g.add_input("last_position", TensorProto.INT64, [1])
        self.token_mask = g.op("Reshape", [mask, g.const([1, bucket, 1])])
        self.bias = self.causal_bias()
        record = plan.selection.needs_local_stats
        logits = self.decoder(ids, None, "", "", lambda layer, h: self.dense_ffn(layer, h, record))
        g.add_output(logits, "logits", TensorProto.FLOAT, [1, 1, spec.vocab_size])
        for layer, scores in enumerate(self.local_stats):
            g.add_output(scores, f"glass_local_scores.{layer}", TensorProto.FLOAT, [plan.m])
        for layer in range(plan.num_layers):
            for kind in ("key", "value"):
                g.outputs.append(helper.make_tensor_value_info(f"present.{layer}.{kind}", TensorProto.FLOAT,
                                                               [1, spec.num_kv_heads, bucket, spec.head_dim]))
        return self

    def build_selection(self) -> "StaticGraph":
        """Local scores [L, m] -> kept indices [L, k] (for the CPU; no input when the method needs no scores)."""
        plan, g = self.plan, self.g
        local = None
        if plan.selection.needs_local_stats:
            local = g.add_input("glass_local_scores", TensorProto.FLOAT, [plan.num_layers, plan.m])
        g.add_output(self.selection(local), "glass_indices", TensorProto.INT64, [plan.num_layers, plan.k])
        return self

    def build_decode(self) -> "StaticGraph":
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
