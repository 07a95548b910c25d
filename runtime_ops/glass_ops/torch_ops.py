"""The torch.library definition of glass::gather_ffn: reference CPU kernel, fake kernel, .out variant."""

from __future__ import annotations

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


REFERENCES = {"gather_ffn": reference, "ffn_up": ffn_up_reference, "ffn_down": ffn_down_reference}


def _output_shape(name, first, second):
    if name == "gather_ffn":
        return first.shape
    if name == "ffn_up":
        return (*first.shape[:-1], second.shape[0])
    return (*first.shape[:-1], second.shape[1])


def _register(name, ref):
    def functional(*args):
        return ref(*args)

    def out_variant(*args, out):
        result = ref(*args)
        out.resize_(result.shape).copy_(result)
        return out

    def fake(*args):
        return args[0].new_empty(_output_shape(name, args[0], args[1]))

    def out_fake(*args, out):
        return out

    torch.library.impl(f"glass::{name}", "CompositeExplicitAutograd")(functional)
    torch.library.impl(f"glass::{name}.out", "CompositeExplicitAutograd")(out_variant)
    torch.library.register_fake(f"glass::{name}")(fake)
    torch.library.register_fake(f"glass::{name}.out")(out_fake)


for _name, _ref in REFERENCES.items():
    _register(_name, _ref)


def gather_ffn(x, w_gate_up, w_down_t, idx, activation: int):
    return torch.ops.glass.gather_ffn(x, w_gate_up, w_down_t, idx, activation)


def pack_ffn_weights(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Neutral FFN weights (gate, up [m, d]; down [d, m]) -> neuron-contiguous (w_gate_up, w_down_t)."""
    return torch.stack([gate, up], dim=1).contiguous(), down.T.contiguous()
