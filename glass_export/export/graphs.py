"""The two graphs of a GLASS artifact, as torch modules ready for torch.export.

Both wrap one copy of the Hugging Face model whose FFNs are replaced by
`GraphFFN` modules holding the neuron-contiguous weights (w_gate_up [m, 2, d],
w_down_t [m, d]), so the prefill graph (dense FFN) and the decode graph
(glass::gather_ffn over the kept neurons) read the very same tensors and an
exporter can store them once.

- PrefillGraph(input_ids [1, T]) -> logits [1, T, V], local scores [L, m],
  indices [L, k] (int64, ascending), present key/value per layer.
- DecodeGraph(input_ids [1, 1], position_ids [1, 1], indices [L, k], past...)
  -> logits [1, 1, V], present key/value per layer.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache

import glass_ops  # noqa: F401  (registers torch.ops.glass.gather_ffn)
from glass_ops import ACTIVATION_CODES, pack_ffn_weights

from ..models import apply_activation, decoder_layers, ffn_layers
from ..selection import SelectionConfig, normalised_square_sum, random_selection, ranks_by_topk, select_with_ranks


class FFNContext:
    """What the graph wrapper tells every GraphFFN while it traces one forward pass."""

    def __init__(self, dense_ops: bool = False):
        self.mode = "dense"  # "dense" | "record" (dense + local statistics) | "gather"
        self.indices: torch.Tensor | None = None
        self.stats: list[torch.Tensor] = []
        # Dense FFN through glass::ffn_up / glass::ffn_down instead of matmuls: for runtimes whose
        # matmul delegate would keep its own re-packed copy of the weights (XNNPACK).
        self.dense_ops = dense_ops


class GraphFFN(torch.nn.Module):
    """A decoder layer's FFN over neuron-contiguous weights."""

    def __init__(self, layer: int, gate, up, down, activation: str, context: FFNContext):
        super().__init__()
        w_gate_up, w_down_t = pack_ffn_weights(gate.detach(), up.detach(), down.detach())
        self.w_gate_up = torch.nn.Parameter(w_gate_up, requires_grad=False)
        self.w_down_t = torch.nn.Parameter(w_down_t, requires_grad=False)
        self.layer = layer
        self.activation = activation
        self.context = context

    def forward(self, x):
        ctx = self.context
        if ctx.mode == "gather":
            return torch.ops.glass.gather_ffn(
                x, self.w_gate_up, self.w_down_t, ctx.indices[self.layer], ACTIVATION_CODES[self.activation]
            )
        m, _, d = self.w_gate_up.shape
        if ctx.dense_ops:
            z = torch.ops.glass.ffn_up(x, self.w_gate_up, ACTIVATION_CODES[self.activation])
        else:
            # One matmul over [2m, d] rows (gate_i, up_i interleaved), the same bytes the gather op reads.
            gate_up = torch.matmul(x, self.w_gate_up.reshape(2 * m, d).transpose(0, 1)).unflatten(-1, (m, 2))
            z = apply_activation(self.activation, gate_up[..., 0]) * gate_up[..., 1]
        if ctx.mode == "record":
            ctx.stats.append(normalised_square_sum(z.reshape(-1, m)))
        return torch.ops.glass.ffn_down(z, self.w_down_t) if ctx.dense_ops else torch.matmul(z, self.w_down_t)


def graph_model(model, dense_ops: bool = False):
    """A copy of the model whose FFNs are GraphFFN modules sharing one FFNContext."""
    ffns = ffn_layers(model)
    context = FFNContext(dense_ops)
    clone = copy.deepcopy(model).eval()
    for index, (layer, ffn) in enumerate(zip(decoder_layers(clone), ffns)):
        layer.mlp = GraphFFN(index, ffn.gate, ffn.up, ffn.down, ffn.activation, context)
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


def flatten_cache(cache) -> list[torch.Tensor]:
    tensors = []
    for layer in cache.layers:
        tensors += [layer.keys, layer.values]
    return tensors


class PrefillGraph(torch.nn.Module):
    def __init__(self, model, context: FFNContext, config: SelectionConfig, global_rank: torch.Tensor | None, m: int,
                 kv: StaticKV | None = None):
        super().__init__()
        self.model = model
        self.kv = kv  # None: a dynamic cache, returned as present tensors
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
            # a constant of the graph: torch.export cannot trace a seeded randperm (selection.select_with_ranks
            # draws the same set)
            self.register_buffer("fixed_indices", random_selection(self.num_layers, m, self.k, config.seed))

    def forward(self, input_ids):
        self.context.mode = "record"
        self.context.stats = []
        if self.kv is None:
            cache = DynamicCache(config=self.model.config)
        else:
            cache = self.kv.at(torch.zeros((), dtype=torch.int64), reset=True)
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True)
        local = torch.stack(self.context.stats).sqrt()
        self.context.mode = "dense"
        indices = self.select(local)
        if self.kv is not None:
            return out.logits, local, indices
        return (out.logits, local, indices, *flatten_cache(out.cache))

    def select(self, local: torch.Tensor) -> torch.Tensor:
        if self.config.method == "random":
            return self.fixed_indices.clone()
        return select_with_ranks(self.config, local, self.global_rank, self.m, self.num_layers, rank_fn=ranks_by_topk)


class DecodeGraph(torch.nn.Module):
    def __init__(self, model, context: FFNContext, sparse: bool, kv: StaticKV | None = None):
        super().__init__()
        self.model = model
        self.context = context
        self.sparse = sparse
        self.kv = kv  # None: the past comes in as tensors and the present goes out

    def forward(self, input_ids, position_ids, indices, past: tuple[torch.Tensor, ...] = ()):
        self.context.mode = "gather" if self.sparse else "dense"
        self.context.indices = indices
        if self.kv is None:
            cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=self.model.config)
        else:
            cache = self.kv.at(position_ids)
        out = self.model(input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=True)
        self.context.mode = "dense"
        self.context.indices = None
        if self.kv is not None:
            return out.logits
        return (out.logits, *flatten_cache(out.cache))
