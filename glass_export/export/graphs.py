"""The two methods of an ExecuTorch GLASS program, as torch modules ready for torch.export.

Both wrap one copy of the Hugging Face model whose FFNs are replaced by `GraphFFN` modules holding
the neuron-contiguous weights (fp32: w_gate_up [m, 2, d], w_down_t [m, d]; quantised: codes and
scales in MatMulNBits' row layout), read through the glass ops in both methods: dense ffn_up /
ffn_down in prefill, gather_ffn over the kept neurons in decode. The program therefore stores each
FFN weight once. The KV cache is a static buffer per layer shared by both methods.

- PrefillGraph(input_ids [1, T]) -> logits [1, T, V], local scores [L, m], indices [L, k].
- DecodeGraph(input_ids [1, 1], position_ids [1, 1], indices [L, k]) -> logits [1, 1, V].
"""

from __future__ import annotations

import copy

import torch

import glass_ops  # noqa: F401  (registers torch.ops.glass.*)
from glass_ops import ACTIVATION_CODES, pack_ffn_weights

from ..models import decoder_layers, ffn_layers
from ..quantization import QuantScheme, quantize_rows
from ..selection import SelectionConfig, normalised_square_sum, random_selection, ranks_by_topk, select_with_ranks


class FFNContext:
    """What the graph wrapper tells every GraphFFN while it traces one forward pass."""

    def __init__(self):
        self.mode = "dense"  # "dense" | "record" (dense + local statistics) | "gather"
        self.indices: torch.Tensor | None = None
        self.stats: list[torch.Tensor] = []


class GraphFFN(torch.nn.Module):
    """A decoder layer's FFN over neuron-contiguous weights, fp32 or quantised."""

    def __init__(self, layer: int, gate, up, down, activation: str, context: FFNContext, quant: QuantScheme):
        super().__init__()
        w_gate_up, w_down_t = pack_ffn_weights(gate.detach().float(), up.detach().float(), down.detach().float())
        self.quant = quant
        self.layer = layer
        self.activation = ACTIVATION_CODES[activation]
        self.context = context
        if quant.quantized:
            m, _, d = w_gate_up.shape
            for name, rows in (("gate_up", w_gate_up.reshape(2 * m, d)), ("down", w_down_t)):
                q = quantize_rows(rows.numpy(), quant.bits, quant.group_size)
                self.register_buffer(f"{name}_codes", torch.from_numpy(q.blocked_codes()))
                self.register_buffer(f"{name}_scales", torch.from_numpy(q.scales))
        else:
            self.w_gate_up = torch.nn.Parameter(w_gate_up, requires_grad=False)
            self.w_down_t = torch.nn.Parameter(w_down_t, requires_grad=False)

    def forward(self, x):
        ctx, q = self.context, self.quant
        if ctx.mode == "gather":
            idx = ctx.indices[self.layer]
            if q.quantized:
                return torch.ops.glass.gather_ffn_q(x, self.gate_up_codes, self.gate_up_scales, self.down_codes,
                                                    self.down_scales, idx, self.activation, q.bits, q.group_size,
                                                    q.accuracy_level)
            return torch.ops.glass.gather_ffn(x, self.w_gate_up, self.w_down_t, idx, self.activation)
        if q.quantized:
            z = torch.ops.glass.ffn_up_q(x, self.gate_up_codes, self.gate_up_scales, self.activation, q.bits,
                                         q.group_size, q.accuracy_level)
        else:
            z = torch.ops.glass.ffn_up(x, self.w_gate_up, self.activation)
        if ctx.mode == "record":
            ctx.stats.append(normalised_square_sum(z.reshape(-1, z.shape[-1])))
        if q.quantized:
            return torch.ops.glass.ffn_down_q(z, self.down_codes, self.down_scales, q.bits, q.group_size)
        return torch.ops.glass.ffn_down(z, self.w_down_t)


def graph_model(model, quant: QuantScheme = QuantScheme()):
    """A copy of the model whose FFNs are GraphFFN modules sharing one FFNContext."""
    ffns = ffn_layers(model)
    context = FFNContext()
    clone = copy.deepcopy(model).eval()
    for index, (layer, ffn) in enumerate(zip(decoder_layers(clone), ffns)):
        layer.mlp = GraphFFN(index, ffn.gate, ffn.up, ffn.down, ffn.activation, context, quant)
    return clone, context


class StaticKV(torch.nn.Module):
    """A static KV cache [1, kv_heads, max_seq_len, head_dim] per layer, held as module buffers.

    Exported programs keep these as mutable buffers; with ExecuTorch's shared mutable
    buffers the prefill and decode methods read and write the same memory.
    """

    def __init__(self, config, max_seq_len: int, num_kv_heads: int, head_dim: int):
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        super().__init__()
        self.cache = StaticCache(max_cache_len=max_seq_len, config=config)
        # Sliding-window layers carry control flow export cannot keep; within max_seq_len <= window
        # a plain static layer is equivalent (the exporter checks that bound).
        self.cache.layers = [StaticLayer(max_seq_len) for _ in self.cache.layers]
        self.cache.early_initialization(1, num_kv_heads, head_dim, torch.float32, "cpu")
        for i, layer in enumerate(self.cache.layers):
            self.register_buffer(f"key_{i}", layer.keys, persistent=False)
            self.register_buffer(f"value_{i}", layer.values, persistent=False)
            self.register_buffer(f"length_{i}", layer.cumulative_length, persistent=False)

    def at(self, position, reset: bool = False):
        """The cache, set to append at `position` (an int64 tensor holding one value).

        reset (prefill) zeroes it first: ExecuTorch gives mutable buffers no initial
        value, and masked-out garbage (a NaN) would still poison attention's sums.
        """
        for i, layer in enumerate(self.cache.layers):
            # Read the buffers through the module so torch.export sees buffers, not constants.
            layer.keys, layer.values = getattr(self, f"key_{i}"), getattr(self, f"value_{i}")
            layer.cumulative_length = getattr(self, f"length_{i}")
            layer.cumulative_length.copy_(position.reshape(()))
            if reset:
                layer.keys.zero_()
                layer.values.zero_()
        return self.cache


class PrefillGraph(torch.nn.Module):
    def __init__(self, model, context: FFNContext, config: SelectionConfig, global_rank: torch.Tensor | None, m: int,
                 kv: StaticKV):
        super().__init__()
        self.model = model
        self.kv = kv
        self.context = context
        self.config = config
        self.k = config.keep_count(m)
        self.m = m
        self.num_layers = len(decoder_layers(model))
        # Prior ranks are constants of the graph (None for griffin / dense / random).
        if global_rank is not None:
            self.register_buffer("global_rank", global_rank.to(torch.int64).contiguous())
        else:
            self.global_rank = None
        if config.method == "random":
            # a constant of the graph: torch.export cannot trace a seeded randperm (select_with_ranks draws
            # the same set)
            self.register_buffer("fixed_indices", random_selection(self.num_layers, m, self.k, config.seed))

    def forward(self, input_ids):
        record = self.config.needs_local_stats
        self.context.mode = "record" if record else "dense"
        self.context.stats = []
        cache = self.kv.at(torch.zeros((), dtype=torch.int64), reset=True)
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True)
        local = torch.stack(self.context.stats).sqrt() if record else torch.zeros(self.num_layers, self.m)
        self.context.mode = "dense"
        return out.logits, local, self.select(local)

    def select(self, local: torch.Tensor) -> torch.Tensor:
        if self.config.method == "random":
            return self.fixed_indices.clone()
        return select_with_ranks(self.config, local, self.global_rank, self.m, self.num_layers, rank_fn=ranks_by_topk)


class DecodeGraph(torch.nn.Module):
    def __init__(self, model, context: FFNContext, sparse: bool, kv: StaticKV):
        super().__init__()
        self.model = model
        self.context = context
        self.sparse = sparse
        self.kv = kv

    def forward(self, input_ids, position_ids, indices):
        self.context.mode = "gather" if self.sparse else "dense"
        self.context.indices = indices
        out = self.model(input_ids=input_ids, position_ids=position_ids, cache=self.kv.at(position_ids), use_cache=True)
        self.context.mode = "dense"
        self.context.indices = None
        return out.logits
