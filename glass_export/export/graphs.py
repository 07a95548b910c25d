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
from ..selection import LAMBDA_SCALE, SelectionConfig, fuse_and_select, normalised_square_sum, ranks_by_topk


class FFNContext:
    """What the graph wrapper tells every GraphFFN while it traces one forward pass."""

    def __init__(self):
        self.mode = "dense"  # "dense" | "record" (dense + local statistics) | "gather"
        self.indices: torch.Tensor | None = None
        self.stats: list[torch.Tensor] = []


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
        # One matmul over [2m, d] rows (gate_i, up_i interleaved), the same bytes the gather op reads.
        gate_up = torch.matmul(x, self.w_gate_up.reshape(2 * m, d).transpose(0, 1)).unflatten(-1, (m, 2))
        z = apply_activation(self.activation, gate_up[..., 0]) * gate_up[..., 1]
        if ctx.mode == "record":
            ctx.stats.append(normalised_square_sum(z.reshape(-1, m)))
        return torch.matmul(z, self.w_down_t)


def graph_model(model):
    """A copy of the model whose FFNs are GraphFFN modules sharing one FFNContext."""
    ffns = ffn_layers(model)
    context = FFNContext()
    clone = copy.deepcopy(model).eval()
    for index, (layer, ffn) in enumerate(zip(decoder_layers(clone), ffns)):
        layer.mlp = GraphFFN(index, ffn.gate, ffn.up, ffn.down, ffn.activation, context)
    return clone, context


def flatten_cache(cache) -> list[torch.Tensor]:
    tensors = []
    for layer in cache.layers:
        tensors += [layer.keys, layer.values]
    return tensors


class PrefillGraph(torch.nn.Module):
    def __init__(self, model, context: FFNContext, config: SelectionConfig, global_rank: torch.Tensor | None, m: int):
        super().__init__()
        self.model = model
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
            from ..selection import random_selection

            self.register_buffer("fixed_indices", random_selection(self.num_layers, m, self.k, config.seed))

    def forward(self, input_ids):
        self.context.mode = "record"
        self.context.stats = []
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True)
        local = torch.stack(self.context.stats).sqrt()
        self.context.mode = "dense"
        indices = self.select(local)
        return (out.logits, local, indices, *flatten_cache(out.cache))

    def select(self, local: torch.Tensor) -> torch.Tensor:
        method = self.config.method
        if method == "dense":
            return torch.arange(self.m, dtype=torch.int64).expand(self.num_layers, self.m).clone()
        if method == "random":
            return self.fixed_indices.clone()
        from ..selection import lambda_units

        lam = lambda_units(self.config.effective_lambda)
        local_rank = ranks_by_topk(local) if lam > 0 else torch.zeros_like(self.global_rank)
        global_rank = self.global_rank if lam < LAMBDA_SCALE else None
        return fuse_and_select(local_rank, global_rank, lam, self.k)


class DecodeGraph(torch.nn.Module):
    def __init__(self, model, context: FFNContext, sparse: bool):
        super().__init__()
        self.model = model
        self.context = context
        self.sparse = sparse

    def forward(self, input_ids, position_ids, indices, past: tuple[torch.Tensor, ...]):
        self.context.mode = "gather" if self.sparse else "dense"
        self.context.indices = indices
        cache = DynamicCache(ddp_cache_data=list(zip(past[0::2], past[1::2])), config=self.model.config)
        out = self.model(input_ids=input_ids, position_ids=position_ids, cache=cache, use_cache=True)
        self.context.mode = "dense"
        self.context.indices = None
        return (out.logits, *flatten_cache(out.cache))
