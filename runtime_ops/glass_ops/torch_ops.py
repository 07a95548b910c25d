"""The torch.library definition of glass::gather_ffn: reference CPU kernel, fake kernel, .out variant."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATION_CODES = {"silu": 0, "gelu_tanh": 1}

torch.library.define(
    "glass::gather_ffn",
    "(Tensor x, Tensor w_gate_up, Tensor w_down_t, Tensor idx, int activation) -> Tensor",
)
torch.library.define(
    "glass::gather_ffn.out",
    "(Tensor x, Tensor w_gate_up, Tensor w_down_t, Tensor idx, int activation, *, Tensor(a!) out) -> Tensor(a!)",
)


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


@torch.library.impl("glass::gather_ffn", "CompositeExplicitAutograd")
def _gather_ffn(x, w_gate_up, w_down_t, idx, activation):
    return reference(x, w_gate_up, w_down_t, idx, activation)


@torch.library.impl("glass::gather_ffn.out", "CompositeExplicitAutograd")
def _gather_ffn_out(x, w_gate_up, w_down_t, idx, activation, *, out):
    result = reference(x, w_gate_up, w_down_t, idx, activation)
    out.resize_(result.shape).copy_(result)
    return out


@torch.library.register_fake("glass::gather_ffn")
def _gather_ffn_fake(x, w_gate_up, w_down_t, idx, activation):
    return x.new_empty(x.shape)


@torch.library.register_fake("glass::gather_ffn.out")
def _gather_ffn_out_fake(x, w_gate_up, w_down_t, idx, activation, *, out):
    return out


def gather_ffn(x, w_gate_up, w_down_t, idx, activation: int):
    return torch.ops.glass.gather_ffn(x, w_gate_up, w_down_t, idx, activation)


def pack_ffn_weights(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neutral FFN weights (gate, up [m, d]; down [d, m]) -> neuron-contiguous (w_gate_up, w_down_t)."""
    return torch.stack([gate, up], dim=1).contiguous(), down.T.contiguous()
