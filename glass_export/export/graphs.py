"""The two methods of an ExecuTorch GLASS program, as torch modules ready for torch.export.

Both wrap one copy of the Hugging Face model whose FFNs are replaced by `GraphFFN` modules holding
the neuron-contiguous weights (fp32: w_gate_up [m, 2, d], w_down_t [m, d]; quantised: codes and
scales in MatMulNBits' row layout), read through the glass ops in both methods: dense ffn_up /
ffn_down in prefill, gather_ffn over the kept neurons in decode (quantised: norm_gather_ffn_q, the
layer's pre-FFN RMSNorm folded in). The program therefore stores each FFN weight once. The KV cache
is a static buffer per layer shared by both methods.

A tied embedding and LM head read one table through the glass ops too (TiedTable), so the program
stores it once: XNNPACK's LM head would keep a packed copy of its own.

- PrefillGraph(input_ids [1, T]) -> logits [1, T, V], local scores [L, m], indices [L, k].
- DecodeGraph(input_ids [1, 1], position_ids [1, 1], indices [L, k]) -> logits [1, 1, V].
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys

import torch
from transformers import AttentionInterface, StaticCache
from transformers.cache_utils import StaticLayer

import glass_ops  # noqa: F401  (registers torch.ops.glass.*)
from glass_ops import ACTIVATION_CODES, native, pack_ffn_weights

from ..models import decoder_layers, ffn_layers
from ..models.decoder import OFFSET_NORM_FAMILIES, ffn_norm, ffn_norm_name, rms_eps
from ..quantization import QuantScheme, glass_reads_tied_table, quantize_rows
from ..selection import LAMBDA_SCALE, SelectionConfig, random_selection, ranks_by_topk, select_with_ranks


class FFNContext:
    """What the graph wrapper tells every GraphFFN while it traces one forward pass."""

    def __init__(self):
        self.mode = "dense"  # "dense" | "record" (dense + local statistics) | "gather"
        self.indices: torch.Tensor | None = None
        self.stats: list[torch.Tensor] = []


class GraphFFN(torch.nn.Module):
    """A decoder layer's RMSNorm and FFN over neuron-contiguous weights, fp32 or quantised: graph_model moves the
    norm in here so the quantised decode folds it into its one op (glass::norm_gather_ffn_q)."""

    def __init__(self, layer: int, norm: torch.nn.Module, norm_offset: bool, norm_eps: float, gate, up, down,
                 activation: str, context: FFNContext, quant: QuantScheme):
        super().__init__()
        w_gate_up, w_down_t = pack_ffn_weights(gate.detach().float(), up.detach().float(), down.detach().float())
        self.quant = quant
        self.layer = layer
        self.activation = ACTIVATION_CODES[activation]
        self.context = context
        self.norm = norm  # the family's own module (prefill, fp32 decode)
        self.norm_offset = norm_offset
        if quant.quantized:
            glass_norm_weight(norm, norm_offset)  # registered now, read by the decode op
            self.norm_eps = norm_eps
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
        if ctx.mode == "gather" and q.quantized:
            return torch.ops.glass.norm_gather_ffn_q(x, glass_norm_weight(self.norm, self.norm_offset), self.norm_eps,
                                                     self.gate_up_codes, self.gate_up_scales, self.down_codes,
                                                     self.down_scales, ctx.indices, self.layer, self.activation,
                                                     q.bits, q.group_size, q.accuracy_level)
        x = self.norm(x)
        if ctx.mode == "gather":
            return torch.ops.glass.gather_ffn(x, self.w_gate_up, self.w_down_t, ctx.indices[self.layer],
                                              self.activation)
        if q.quantized:
            z = torch.ops.glass.ffn_up_q(x, self.gate_up_codes, self.gate_up_scales, self.activation, q.bits,
                                         q.group_size, q.accuracy_level)
        else:
            z = torch.ops.glass.ffn_up(x, self.w_gate_up, self.activation)
        if ctx.mode == "record":
            # a glass kernel: ExecuTorch's portable float64 ops (cast, mul, div, sum) were a quarter of the
            # GLASS prefill
            ctx.stats.append(torch.ops.glass.normalised_square_sum(z.reshape(-1, z.shape[-1])))
        if q.quantized:
            return torch.ops.glass.ffn_down_q(z, self.down_codes, self.down_scales, q.bits, q.group_size)
        return torch.ops.glass.ffn_down(z, self.w_down_t)


def glass_norm_weight(norm: torch.nn.Module, offset: bool) -> torch.Tensor:
    """The weight the glass kernels multiply an RMSNorm by: the family's own parameter (the program stores it
    once), or Gemma's 1 + w, folded once into a buffer of the norm module."""
    if not offset:
        return norm.weight
    if not hasattr(norm, "glass_weight"):
        norm.register_buffer("glass_weight", norm.weight.detach().float() + 1.0)
    return norm.glass_weight


class TiedTable(torch.nn.Module):
    """A tied embedding table [V, d] as the glass ops read it: the model's own Parameter (fp32) or its rows
    quantised like the FFN's. One module under both readers, so torch.export lifts it once."""

    def __init__(self, weight: torch.nn.Parameter, quant: QuantScheme):
        super().__init__()
        self.quant = quant
        if quant.quantized:
            q = quantize_rows(weight.detach().float().numpy(), quant.bits, quant.group_size)
            self.register_buffer("codes", torch.from_numpy(q.blocked_codes()))
            self.register_buffer("scales", torch.from_numpy(q.scales))
        else:
            self.weight = weight


class TiedEmbedding(torch.nn.Module):
    """The lookup of a quantised TiedTable (glass::embedding_q), with the family's embedding scale if its
    embedding module applies one (Gemma 3)."""

    def __init__(self, table: TiedTable, embed_scale: float | None):
        super().__init__()
        self.table = table
        self.embed_scale = embed_scale

    def forward(self, input_ids):
        q = self.table.quant
        rows = torch.ops.glass.embedding_q(input_ids, self.table.codes, self.table.scales, q.bits, q.group_size)
        return rows if self.embed_scale is None else rows * self.embed_scale


class TiedLMHead(torch.nn.Module):
    """logits = x . table^T (glass::linear_rows, or linear_rows_q at the scheme's accuracy level)."""

    def __init__(self, table: TiedTable):
        super().__init__()
        self.table = table

    def forward(self, x):
        q = self.table.quant
        if q.quantized:
            return torch.ops.glass.linear_rows_q(x, self.table.codes, self.table.scales, q.bits, q.group_size,
                                                 q.accuracy_level)
        return torch.ops.glass.linear_rows(x, self.table.weight)


def tie_through_glass(model, quant: QuantScheme) -> None:
    """Points a tied model's LM head (and, quantised, its embedding) at one TiedTable, in place."""
    embedding = model.get_input_embeddings()
    table = TiedTable(embedding.weight, quant)
    if quant.quantized:
        scale = getattr(embedding, "embed_scale", None)
        model.set_input_embeddings(TiedEmbedding(table, None if scale is None else float(scale)))
    model.set_output_embeddings(TiedLMHead(table))


def graph_model(model, quant: QuantScheme = QuantScheme(), glass_ffn: bool = True):
    """A copy of the model whose FFNs, with the RMSNorm before each, are GraphFFN modules sharing one
    FFNContext (glass_ffn False, for dense twins: the model's own norms and FFNs, lowered as stock
    operators), and whose tied embedding is one TiedTable (glass_reads_tied_table)."""
    ffns = ffn_layers(model)
    context = FFNContext()
    clone = copy.deepcopy(model).eval()
    if glass_ffn:
        family = model.config.model_type
        for index, (layer, ffn) in enumerate(zip(decoder_layers(clone), ffns)):
            norm, offset = ffn_norm(layer, family)
            layer.mlp = GraphFFN(index, norm, offset, rms_eps(model.config), ffn.gate, ffn.up, ffn.down,
                                 ffn.activation, context, quant)
            setattr(layer, ffn_norm_name(family), torch.nn.Identity())  # GraphFFN applies it
    if glass_reads_tied_table(clone):
        tie_through_glass(clone, quant)
    return clone, context


@contextlib.contextmanager
def rope_through_glass(model):
    """While tracing: the model family's apply_rotary_pos_emb (transformers' rotate-half rotary embedding,
    identical in every supported family) as two glass::rope calls, where ExecuTorch would run about eight
    small XNNPACK operators per tensor (7 us a layer on 2 x86 cores). A partial rotary embedding (Phi-3's
    factor below 1) keeps the family's own function."""
    module = sys.modules[type(decoder_layers(model)[0].self_attn).__module__]
    original = module.apply_rotary_pos_emb

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        if unsqueeze_dim != 1 or cos.shape[-1] != q.shape[-1] or q.dtype != torch.float32:
            return original(q, k, cos, sin, unsqueeze_dim)
        return torch.ops.glass.rope(q, cos, sin), torch.ops.glass.rope(k, cos, sin)

    module.apply_rotary_pos_emb = apply_rotary_pos_emb
    try:
        yield
    finally:
        module.apply_rotary_pos_emb = original


@contextlib.contextmanager
def norms_through_glass(model):
    """While tracing: every RMSNorm module of the model (the decoder layers' norms, Qwen 3's and Gemma 3's
    per-head q/k norms, the final norm) as one glass::rms_norm call, where ExecuTorch would run a portable
    mean between two XNNPACK delegate calls (weights: glass_norm_weight)."""
    offset = model.config.model_type in OFFSET_NORM_FAMILIES
    norms = [module for module in model.modules() if type(module).__name__.endswith("RMSNorm")]
    for norm in norms:
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", None)))
        norm.forward = functools.partial(torch.ops.glass.rms_norm, weight=glass_norm_weight(norm, offset), eps=eps)
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward  # the class's forward again


FUSED_ATTENTION = "glass_et_custom_sdpa"


def fused_attention_supported(config) -> bool:
    """llama::custom_sdpa has no attention-logit soft-capping (Gemma 2); every other family runs on it."""
    return getattr(config, "attn_logit_softcapping", None) is None


def fused_sdpa_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """A transformers attention function over FusedCacheLayer's [1, max_seq_len, kv_heads, head_dim] cache:
    one llama::custom_sdpa call (grouped-query heads and the causal mask from start_pos inside), instead
    of HF's repeat_kv copies, mask and softmax ops, which ExecuTorch would run as portable ops."""
    start = module.glass_cache_layer.start_pos
    out = torch.ops.llama.custom_sdpa(query.transpose(1, 2), key, value, start, None, 0.0, True, scaling)
    return out, None


class FusedCacheLayer(StaticLayer):
    """One layer's cache for fused_sdpa_attention, in ExecuTorch's LLM layout [1, max_seq_len, kv_heads,
    head_dim], written in place by llama::update_cache at start_pos."""

    def __init__(self, max_seq_len: int, num_kv_heads: int, head_dim: int):
        super().__init__(max_seq_len)
        self.keys = torch.zeros(1, max_seq_len, num_kv_heads, head_dim)
        self.values = torch.zeros(1, max_seq_len, num_kv_heads, head_dim)
        self.is_initialized = True
        self.start_pos: int | torch.SymInt = 0

    def update(self, key_states, value_states, *args, **kwargs):
        torch.ops.llama.update_cache(key_states.transpose(1, 2), self.keys, self.start_pos)
        torch.ops.llama.update_cache(value_states.transpose(1, 2), self.values, self.start_pos)
        return self.keys, self.values

    def get_seq_length(self):
        return self.start_pos


class StaticKV(torch.nn.Module):
    """A static KV cache per layer, held as module buffers.

    Exported programs keep these as mutable buffers; with ExecuTorch's shared mutable buffers the
    prefill and decode methods read and write the same memory. With fused attention (every family but
    Gemma 2) the buffers are [1, max_seq_len, kv_heads, head_dim] and attention is ExecuTorch's
    llama::custom_sdpa; otherwise [1, kv_heads, max_seq_len, head_dim] through transformers' own
    StaticCache and attention.
    """

    def __init__(self, model, max_seq_len: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        config = model.config
        self.max_seq_len = max_seq_len
        self.fused = fused_attention_supported(config)
        self.cache = StaticCache(max_cache_len=max_seq_len, config=config)
        if self.fused:
            native.load_llm_custom_ops()
            AttentionInterface.register(FUSED_ATTENTION, fused_sdpa_attention)
            model.set_attn_implementation(FUSED_ATTENTION)
            self.cache.layers = [FusedCacheLayer(max_seq_len, num_kv_heads, head_dim) for _ in self.cache.layers]
            for layer, cache_layer in zip(decoder_layers(model), self.cache.layers):
                # a plain attribute (not a submodule): the attention function reads start_pos from it
                layer.self_attn.__dict__["glass_cache_layer"] = cache_layer
        else:
            # Sliding-window layers carry control flow export cannot keep; within max_seq_len <= window
            # a plain static layer is equivalent (the exporter checks that bound).
            self.cache.layers = [StaticLayer(max_seq_len) for _ in self.cache.layers]
            self.cache.early_initialization(1, num_kv_heads, head_dim, torch.float32, "cpu")
        for i, layer in enumerate(self.cache.layers):
            self.register_buffer(f"key_{i}", layer.keys, persistent=False)
            self.register_buffer(f"value_{i}", layer.values, persistent=False)
            if not self.fused:
                self.register_buffer(f"length_{i}", layer.cumulative_length, persistent=False)

    def at(self, position: torch.Tensor | None):
        """The cache, set to append at `position` (an int64 tensor holding one value; None: prefill, at 0).

        Prefill zeroes it first: ExecuTorch gives mutable buffers no initial value, and masked-out
        garbage (a NaN) would still poison attention's sums.
        """
        if self.fused and position is not None:
            start = position.reshape(()).item()
            torch._check(start >= 0)
            torch._check(start < self.max_seq_len)
        for i, layer in enumerate(self.cache.layers):
            # Read the buffers through the module so torch.export sees buffers, not constants.
            layer.keys, layer.values = getattr(self, f"key_{i}"), getattr(self, f"value_{i}")
            if self.fused:
                layer.start_pos = 0 if position is None else start
            else:
                layer.cumulative_length = getattr(self, f"length_{i}")
                if position is None:
                    layer.cumulative_length.zero_()
                else:
                    layer.cumulative_length.copy_(position.reshape(()))
            if position is None:
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
        cache = self.kv.at(None)
        out = self.model(input_ids=input_ids, cache=cache, use_cache=True)
        local = torch.stack(self.context.stats).sqrt().float() if record else torch.zeros(self.num_layers, self.m)
        self.context.mode = "dense"
        return out.logits, local, self.select(local)

    def select(self, local: torch.Tensor) -> torch.Tensor:
        if self.config.method == "random":
            return self.fixed_indices.clone()
        return select_with_ranks(self.config, local, self.global_rank, self.m, self.num_layers, rank_fn=ranks_by_topk,
                                 fused_select=glass_select_kept)


def glass_select_kept(local: torch.Tensor, global_rank: torch.Tensor | None, lam_units: int, k: int) -> torch.Tensor:
    """select_with_ranks' prompt-dependent selection as one glass::select_kept call, where the graph would run
    three full-length top-k operators (ExecuTorch runs them as slow portable kernels)."""
    return torch.ops.glass.select_kept(local, global_rank, lam_units, LAMBDA_SCALE - lam_units, k)


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
