"""The torch.library definitions of the glass ops: reference CPU kernels, fake kernels, .out variants.

fp32: gather_ffn (decode), ffn_up / ffn_down (dense prefill halves) over neuron-contiguous weights.
Quantised (`_q`): the same three over rows quantised along d in blocks (the decode's as
norm_gather_ffn_q, which applies the layer's RMSNorm first and reads its row of the kept indices;
MatMulNBits' layout, see glass_export/quantization.py): codes uint8 [rows, d / block, block * bits / 8]
and float scales [rows, d / block] read as float16 values (scale_values; the exporter's scales are
float16 values already), with the implicit zero point 2^(bits - 1); with accuracy level 4 the gate/up
products see x quantised per block to int8 as MLAS's CompInt8 does, and norm_gather_ffn_q's down
projection is an integer dot product over neurons with int8 coefficients (decode_down_int8). The
references here define those semantics for PyTorch; the native kernels (src/quant_ffn.h,
src/quant_decode.h) are held to them.

select_kept is GLASS's selection in one op (ranks, fused_rank_keys: the definitions selection.py uses; the
native kernel is src/select_kept.h).

A tied embedding table [V, d], fp32 or quantised the same way, has its own readers so an ExecuTorch
program stores it once: linear_rows(_q), the LM head x . table^T (int8 x per block at accuracy level
4, as MatMulNBits), and embedding_q, the lookup of dequantised rows (src/tied_embedding.h).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTIVATION_CODES = {"silu": 0, "gelu_tanh": 1}

# Each op has a functional form and an .out form (what ExecuTorch's kernels implement).
SCHEMAS = {
    # decode: the FFN over the kept neurons idx
    "gather_ffn": "Tensor x, Tensor w_gate_up, Tensor w_down_t, Tensor idx, int activation",
    # dense prefill in two halves reading the same tensors: z = act(x Wg^T) * (x Wu^T); y = z W_down^T
    "ffn_up": "Tensor x, Tensor w_gate_up, int activation",
    "ffn_down": "Tensor z, Tensor w_down_t",
    # the quantised forms
    # ... and the decode's: the layer's FFN from the residual stream x, its RMSNorm folded in, over row `layer`
    # of the kept indices [layers, k]
    "norm_gather_ffn_q": "Tensor x, Tensor norm_weight, float norm_eps, Tensor gate_up, Tensor gate_up_scales, "
                         "Tensor down, Tensor down_scales, Tensor indices, int layer, int activation, int bits, "
                         "int block_size, int accuracy_level",
    # ... and x + norm_gather_ffn_q(x, ...): the layer's residual add too (ExecuTorch's decode, where the add
    # follows the FFN)
    "residual_norm_gather_ffn_q": "Tensor x, Tensor norm_weight, float norm_eps, Tensor gate_up, "
                                  "Tensor gate_up_scales, Tensor down, Tensor down_scales, Tensor indices, "
                                  "int layer, int activation, int bits, int block_size, int accuracy_level",
    "ffn_up_q": "Tensor x, Tensor gate_up, Tensor gate_up_scales, int activation, int bits, int block_size, "
                "int accuracy_level",
    "ffn_down_q": "Tensor z, Tensor down, Tensor down_scales, int bits, int block_size",
    # GLASS's local statistic of one layer's prompt activations z [T, m] (float32) -> float64 [m]
    "normalised_square_sum": "Tensor z",
    # a tied embedding table [V, d] read by the LM head (logits = x . table^T) and, quantised, by the
    # lookup, so an ExecuTorch program stores it once
    "linear_rows": "Tensor x, Tensor weight",
    "linear_rows_q": "Tensor x, Tensor codes, Tensor scales, int bits, int block_size, int accuracy_level",
    "embedding_q": "Tensor ids, Tensor codes, Tensor scales, int bits, int block_size",
    # transformers' RMSNorm of x [..., d] (rms_norm below), weight [d] with any offset folded in
    "rms_norm": "Tensor x, Tensor weight, float eps",
    # transformers' rotary embedding of x [batch, heads, tokens, head_dim] by cos, sin [batch, tokens, head_dim]
    "rope": "Tensor x, Tensor cos, Tensor sin",
    # GLASS's selection: each layer's k kept neurons [layers, k] (ascending) from the prompt's local scores
    # [layers, m] and the prior's ranks [layers, m] (None: all zero), fused with integer weights
    "select_kept": "Tensor local, Tensor? global_rank, int local_weight, int global_weight, int k",
}
for _name, _args in SCHEMAS.items():
    torch.library.define(f"glass::{_name}", f"({_args}) -> Tensor")
    torch.library.define(f"glass::{_name}.out", f"({_args}, *, Tensor(a!) out) -> Tensor(a!)")


def check_inputs(x, w_gate_up, w_down_t, idx, activation) -> None:
    """The checks every implementation makes: shapes, dtypes, activation code, index range."""
    if w_gate_up.dim() != 3 or w_gate_up.shape[1] != 2:
        raise ValueError(f"glass::gather_ffn: w_gate_up must be [m, 2, d], got {tuple(w_gate_up.shape)}")
    m, _, d = w_gate_up.shape
    if tuple(w_down_t.shape) != (m, d):
        raise ValueError(f"glass::gather_ffn: w_down_t must be [{m}, {d}], got {tuple(w_down_t.shape)}")
    if x.shape[-1] != d:
        raise ValueError(f"glass::gather_ffn: x must end in {d}, got {tuple(x.shape)}")
    if idx.dim() != 1 or idx.dtype != torch.int64:
        raise ValueError(f"glass::gather_ffn: idx must be int64 [k], got {idx.dtype} {tuple(idx.shape)}")
    if activation not in ACTIVATION_CODES.values():
        raise ValueError(f"glass::gather_ffn: activation must be 0 (silu) or 1 (gelu_tanh), got {activation}")


def _activate(code: int, g: torch.Tensor) -> torch.Tensor:
    return F.silu(g) if code == 0 else F.gelu(g, approximate="tanh")


def reference(x, w_gate_up, w_down_t, idx, activation):
    check_inputs(x, w_gate_up, w_down_t, idx, activation)
    m = w_gate_up.shape[0]
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= m):
        bad = idx[(idx < 0) | (idx >= m)][0]
        raise IndexError(f"glass::gather_ffn: index {int(bad)} is out of range [0, {m})")
    kept = w_gate_up.index_select(0, idx)  # [k, 2, d]
    h = _activate(activation, x @ kept[:, 0].T) * (x @ kept[:, 1].T)
    return h @ w_down_t.index_select(0, idx)


def ffn_up_reference(x, w_gate_up, activation):
    if w_gate_up.dim() != 3 or w_gate_up.shape[1] != 2 or x.shape[-1] != w_gate_up.shape[2]:
        raise ValueError(f"glass::ffn_up: expected w_gate_up [m, 2, d] and x [..., d], got {tuple(w_gate_up.shape)}, {tuple(x.shape)}")
    if activation not in ACTIVATION_CODES.values():
        raise ValueError(f"glass::ffn_up: activation must be 0 (silu) or 1 (gelu_tanh), got {activation}")
    return _activate(activation, x @ w_gate_up[:, 0].T) * (x @ w_gate_up[:, 1].T)


def ffn_down_reference(z, w_down_t):
    if w_down_t.dim() != 2 or z.shape[-1] != w_down_t.shape[0]:
        raise ValueError(f"glass::ffn_down: expected w_down_t [m, d] and z [..., m], got {tuple(w_down_t.shape)}, {tuple(z.shape)}")
    return z @ w_down_t


def scale_values(scales: torch.Tensor) -> torch.Tensor:
    """Stored scales as every quantised op reads them: rounded to float16 (the native kernels hold them so)."""
    return scales.to(torch.float16).to(torch.float32)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """codes uint8 [rows, blocks, blob], scales [rows, blocks] -> float32 [rows, blocks * block]."""
    rows, blocks = codes.shape[0], codes.shape[1]
    codes = codes.reshape(rows, blocks, -1)
    if bits == 4:
        codes = torch.stack([codes & 0x0F, codes >> 4], dim=-1).reshape(rows, blocks, -1)
    values = (codes.to(torch.float32) - float(1 << (bits - 1))) * scale_values(scales).reshape(rows, blocks, 1)
    return values.reshape(rows, -1)


def int8_blocks(blocks: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MLAS CompInt8's quantisation along dim: (q, scale) with scale = amax / 127 and
    q = round-half-even(blocks * (127 / amax)) (0 where the block is all zero)."""
    amax = blocks.abs().amax(dim=dim, keepdim=True)
    inverse = torch.where(amax != 0, torch.tensor(127.0) / amax, torch.zeros_like(amax))
    return torch.round(blocks * inverse), amax / 127.0


def quantize_activations(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """x as the int8 kernels see it: per block of the last dim, int8_blocks; returns q * scale."""
    shape = x.shape
    blocks = x.reshape(*shape[:-1], shape[-1] // block_size, block_size).float()
    q, scale = int8_blocks(blocks, -1)
    return (q * scale).reshape(shape).to(x.dtype)


DOWN_GROUP = 32  # kept neurons per int8 group of the decode's down coefficients (src/quant_decode.h)


def decode_down_int8(z, down, down_scales, bits, block_size):
    """The sparse decode's down projection at accuracy level 4, over the kept neurons' down rows
    (codes [k, blocks, blob], scales [k, blocks]) in kept order:

        per group J of 32 consecutive kept neurons (the last padded with zeros) and output block g,
        c_j = z_j * s_{j,g} is quantised like an activation block (int8_blocks), and
        y_i = sum_J t_{J,g} * sum_{j in J} q_j * (u_{j,i} - Z),  g = i // block_size.
    """
    return down_int8_from_groups(z, centred_down_groups(down, bits, block_size), down_scales)


def centred_down_groups(down, bits, block_size):
    """Kept down rows' codes [k, blocks, blob] as u - Z, padded to whole groups: [J, 32, blocks, block_size]."""
    k, blocks = down.shape[0], down.shape[1]
    centred = dequantize(down, torch.ones(k, blocks), bits)
    return F.pad(centred, (0, 0, 0, (-k) % DOWN_GROUP)).reshape(-1, DOWN_GROUP, blocks, block_size)


def down_int8_from_groups(z, centred, down_scales):
    """decode_down_int8 given centred_down_groups(...) (computed once per kept set by eager PyTorch).
    The inner sums are integers below 2^24, so float32 holds them exactly in any order."""
    pad = (-down_scales.shape[0]) % DOWN_GROUP
    c = F.pad(z.float().unsqueeze(-1) * scale_values(down_scales), (0, 0, 0, pad))  # [..., k_pad, blocks]
    q, t = int8_blocks(c.unflatten(-2, (-1, DOWN_GROUP)), -2)  # [..., J, 32, blocks], [..., J, 1, blocks]
    sums = torch.einsum("...jcn,jcnb->...jnb", q, centred)
    return torch.einsum("...jn,...jnb->...nb", t.squeeze(-2), sums).flatten(-2).to(z.dtype)


def _check_quant(name, bits, block_size, accuracy_level=4):
    if bits not in (4, 8) or block_size not in (32, 64, 128, 256) or accuracy_level not in (1, 4):
        raise ValueError(f"glass::{name}: bits 4 or 8, block_size 32/64/128/256 and accuracy_level 1 or 4 expected, "
                         f"got {bits}, {block_size}, {accuracy_level}")


def _gate_up_q(x, gate_up, gate_up_scales, activation, bits, block_size, accuracy_level, rows=None):
    weights = dequantize(gate_up, gate_up_scales, bits)  # [2m, d]: gate_i, up_i interleaved
    if rows is not None:
        weights = weights.reshape(-1, 2, weights.shape[-1])[rows].reshape(-1, weights.shape[-1])
    if accuracy_level == 4:
        x = quantize_activations(x, block_size)
    gate_and_up = (x @ weights.T).unflatten(-1, (-1, 2))
    return _activate(activation, gate_and_up[..., 0]) * gate_and_up[..., 1]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm in float32, the weight with any offset (Gemma's 1 + w) folded in: the definition
    of glass::rms_norm and of the norm glass::norm_gather_ffn_q applies (src/rms_norm.h)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rms_norm_reference(x, weight, eps):
    if weight.dim() != 1 or x.dim() < 1 or x.shape[-1] != weight.shape[0] or not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"glass::rms_norm: expected x [..., d], weight [d] and a finite eps >= 0, got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)}, {eps}")
    return rms_norm(x, weight, eps)


def norm_gather_ffn_q_reference(x, norm_weight, norm_eps, gate_up, gate_up_scales, down, down_scales, indices, layer,
                                activation, bits, block_size, accuracy_level):
    name = "glass::norm_gather_ffn_q"
    _check_quant("norm_gather_ffn_q", bits, block_size, accuracy_level)
    m = gate_up.shape[0] // 2
    if indices.dtype != torch.int64 or indices.dim() != 2:
        raise ValueError(f"{name}: indices must be int64 [layers, k], got {indices.dtype} {tuple(indices.shape)}")
    if not 0 <= layer < indices.shape[0]:
        raise IndexError(f"{name}: layer {layer} is out of range [0, {indices.shape[0]})")
    if tuple(norm_weight.shape) != (x.shape[-1],) or not (math.isfinite(norm_eps) and norm_eps >= 0):
        raise ValueError(f"{name}: norm_weight must be [{x.shape[-1]}] and norm_eps finite and >= 0, got "
                         f"{tuple(norm_weight.shape)}, {norm_eps}")
    idx = indices[layer]
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= m):
        bad = idx[(idx < 0) | (idx >= m)][0]
        raise IndexError(f"{name}: index {int(bad)} is out of range [0, {m})")
    x = rms_norm(x, norm_weight, norm_eps)
    z = _gate_up_q(x, gate_up, gate_up_scales, activation, bits, block_size, accuracy_level, rows=idx)
    if accuracy_level == 4:
        return decode_down_int8(z, down[idx], down_scales[idx], bits, block_size)
    return z @ dequantize(down, down_scales, bits)[idx]


def residual_norm_gather_ffn_q_reference(x, *args):
    return x + norm_gather_ffn_q_reference(x, *args)


def ffn_up_q_reference(x, gate_up, gate_up_scales, activation, bits, block_size, accuracy_level):
    _check_quant("ffn_up_q", bits, block_size, accuracy_level)
    return _gate_up_q(x, gate_up, gate_up_scales, activation, bits, block_size, accuracy_level)


def ffn_down_q_reference(z, down, down_scales, bits, block_size):
    _check_quant("ffn_down_q", bits, block_size)
    return z @ dequantize(down, down_scales, bits)


def normalised_square_sum(z: torch.Tensor) -> torch.Tensor:
    """sum_t (z_t / ||z_t||)^2 over the rows of z [T, m], in float64; a zero row contributes zero.

    The definition of GLASS's local statistic (glass_export.selection's local scores are its square
    roots), which eager PyTorch computes with this function, the ONNX graphs with stock float64 ops and
    ExecuTorch programs with the glass::normalised_square_sum kernel. float64 leaves the activations z
    as the only source of rounding differences between them; the scores are rounded to float32 once.
    Squares are products, not powers (ONNX ReduceL2's definition)."""
    z = z.double()
    norms = (z * z).sum(dim=-1, keepdim=True).sqrt()
    normed = z / torch.where(norms > 0, norms, torch.ones_like(norms))
    return (normed * normed).sum(dim=0)


def normalised_square_sum_reference(z):
    if z.dim() != 2 or z.dtype != torch.float32:
        raise ValueError(f"glass::normalised_square_sum: z must be float32 [T, m], got {z.dtype} {tuple(z.shape)}")
    return normalised_square_sum(z)


def linear_rows_reference(x, weight):
    return x @ weight.T


def linear_rows_q_reference(x, codes, scales, bits, block_size, accuracy_level):
    _check_quant("linear_rows_q", bits, block_size, accuracy_level)
    if accuracy_level == 4:
        x = quantize_activations(x, block_size)
    return x @ dequantize(codes, scales, bits).T


def embedding_q_reference(ids, codes, scales, bits, block_size):
    _check_quant("embedding_q", bits, block_size)
    rows = codes.shape[0]
    if ids.dtype != torch.int64:
        raise ValueError(f"glass::embedding_q: ids must be int64, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
        bad = ids[(ids < 0) | (ids >= rows)][0]
        raise IndexError(f"glass::embedding_q: token id {int(bad)} is out of range [0, {rows})")
    flat = ids.reshape(-1)
    return dequantize(codes[flat], scales[flat], bits).reshape(*ids.shape, -1)


def rope_reference(x, cos, sin):
    if x.dim() != 4 or cos.shape != sin.shape or cos.shape != (x.shape[0], x.shape[2], x.shape[3]) or x.shape[3] % 2:
        raise ValueError(f"glass::rope: x {tuple(x.shape)} and cos, sin {tuple(cos.shape)} do not fit together")
    first, second = x.chunk(2, dim=-1)
    return x * cos.unsqueeze(1) + torch.cat((-second, first), dim=-1) * sin.unsqueeze(1)


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of each neuron along the last dim: 0 = highest score, ties by lower index (NaN above every number,
    where PyTorch's descending sort puts it)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(scores.shape[-1], dtype=torch.int64).expand_as(order)
    return torch.zeros_like(order).scatter_(-1, order, positions)


def fused_rank_keys(local_rank: torch.Tensor, global_rank: torch.Tensor | None, local_weight: int,
                    global_weight: int) -> torch.Tensor:
    """The integer each neuron is ranked by, smallest kept first: the weighted sum of its ranks, then its
    local rank (a permutation), so the keys of a layer are distinct."""
    fused = local_weight * local_rank
    if global_rank is not None:
        fused = fused + global_weight * global_rank
    return fused * local_rank.shape[-1] + local_rank


def select_kept_reference(local, global_rank, local_weight, global_weight, k):
    if local.dim() != 2 or local.dtype != torch.float32:
        raise ValueError(f"glass::select_kept: local must be float32 [layers, m], got {local.dtype} {tuple(local.shape)}")
    m = local.shape[1]
    if not 1 <= k <= m or min(local_weight, global_weight) < 0:
        raise ValueError(f"glass::select_kept: k {k} must lie in [1, {m}] and the weights be non-negative")
    if global_rank is not None:
        if global_rank.shape != local.shape or global_rank.dtype != torch.int64:
            raise ValueError(f"glass::select_kept: global_rank must be int64 {tuple(local.shape)}")
        if global_rank.numel() and (int(global_rank.min()) < 0 or int(global_rank.max()) >= m):
            raise ValueError(f"glass::select_kept: a global rank is out of range [0, {m})")
    keys = fused_rank_keys(ranks(local), global_rank, local_weight, global_weight)
    return torch.topk(keys, k, dim=-1, largest=False).indices.sort(dim=-1).values


REFERENCES = {"gather_ffn": reference, "ffn_up": ffn_up_reference, "ffn_down": ffn_down_reference,
              "norm_gather_ffn_q": norm_gather_ffn_q_reference,
              "residual_norm_gather_ffn_q": residual_norm_gather_ffn_q_reference, "rms_norm": rms_norm_reference,
              "ffn_up_q": ffn_up_q_reference,
              "ffn_down_q": ffn_down_q_reference, "normalised_square_sum": normalised_square_sum_reference,
              "linear_rows": linear_rows_reference, "linear_rows_q": linear_rows_q_reference,
              "embedding_q": embedding_q_reference, "rope": rope_reference, "select_kept": select_kept_reference}


def _output_shape(name, args):
    if name == "normalised_square_sum":
        return (args[0].shape[-1],)
    if name in ("rope", "rms_norm"):
        return args[0].shape
    if name == "select_kept":
        return (args[0].shape[0], args[4])
    x, weights = args[0], args[1]
    if name in ("gather_ffn", "norm_gather_ffn_q", "residual_norm_gather_ffn_q"):
        return x.shape
    if name in ("ffn_up", "linear_rows", "linear_rows_q"):
        return (*x.shape[:-1], weights.shape[0])
    if name == "embedding_q":
        return (*x.shape, weights.shape[1] * args[4])  # blocks * block_size
    if name == "ffn_up_q":
        return (*x.shape[:-1], weights.shape[0] // 2)
    if name == "ffn_down_q":
        return (*x.shape[:-1], weights.shape[1] * args[4])  # blocks * block_size
    return (*x.shape[:-1], weights.shape[1])


def _register(name, ref):
    def functional(*args):
        return ref(*args)

    def out_variant(*args, out):
        result = ref(*args)
        out.resize_(result.shape).copy_(result)
        return out

    def fake(*args):
        dtype = {"normalised_square_sum": torch.float64, "embedding_q": torch.float32,
                 "select_kept": torch.int64}.get(name, args[0].dtype)
        return args[0].new_empty(_output_shape(name, args), dtype=dtype)

    def out_fake(*args, out):
        return out

    torch.library.impl(f"glass::{name}", "CompositeExplicitAutograd")(functional)
    torch.library.impl(f"glass::{name}.out", "CompositeExplicitAutograd")(out_variant)
    torch.library.register_fake(f"glass::{name}")(fake)
    torch.library.register_fake(f"glass::{name}.out")(out_fake)


for _name, _ref in REFERENCES.items():
    _register(_name, _ref)


def pack_ffn_weights(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neutral FFN weights (gate, up [m, d]; down [d, m]) -> neuron-contiguous (w_gate_up, w_down_t)."""
    return torch.stack([gate, up], dim=1).contiguous(), down.T.contiguous()
