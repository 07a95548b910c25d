"""Weight quantisation schemes: one definition for every exporter and for the eager reference.

Every quantised weight is a matrix of rows quantised along its input dimension in blocks of
`group_size`, with ONNX Runtime's own block quantiser (the C++ routine behind
`MatMulNBitsQuantizer`) choosing each block's scale: symmetric, one scale a block, rounded to a
float16 value (as GGUF's Q4_0 / Q8_0 store theirs) and kept in float32 tensors, codes u (from the
rounded scale) stored unsigned with the implicit zero point Z = 8 (4-bit, two codes a byte, low
nibble first) or 128 (8-bit), so that `weight = scale * (u - Z)`. The glass kernels hold the scales
as float16, which takes a tenth off the bytes a sparse decode step streams; MatMulNBits reads the
same float32 tensors, so the two agree exactly. That is MatMulNBits' layout
`B [N, K / group, group * bits / 8]`, and the FFN's neuron-contiguous rows (gate/up rows of each
neuron, W_down's columns) use the very same one, so the glass kernels and MatMulNBits read one copy.

Activations: with `accuracy_level` 4 (the default) every quantised matmul quantises its input per
block to int8 first, as MLAS's CompInt8 path does for MatMulNBits (scale = amax / 127,
round-half-even of x * 127 / amax); the glass kernels do the same for gate and up, and multiply the
float activation z by the dequantised W_down. `accuracy_level` 1 keeps activations in float.

ExecuTorch quantises the rest of the model (attention projections, LM head, embedding) with
torchao, whose linears XNNPACK runs with per-token dynamic int8 activations (8da4w, 8da8w) and whose
embedding runs in ExecuTorch's quantized kernels; the FFN keeps the glass layout above.

`quantize_model` builds the eager reference of a scheme on a target: a copy of the model whose
weights are the dequantised codes and whose quantised matmuls see the quantised activations (or,
for ExecuTorch's non-FFN modules, torchao's own quantised modules), so an artifact and eager PyTorch
compute the same thing up to float rounding. The kept neurons are therefore chosen from the
quantised model's own activations, in the artifact and in the reference alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import GlassExportError

WEIGHT_SCHEMES = ("fp32", "int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)
ACCURACY_LEVELS = {1: "float32 activations", 4: "int8 activations (per block)"}


@dataclass(frozen=True)
class QuantScheme:
    weights: str = "fp32"
    group_size: int = 32
    accuracy_level: int = 4

    def __post_init__(self):
        if self.weights not in WEIGHT_SCHEMES:
            raise GlassExportError(f"unknown --quant {self.weights!r}", f"choose one of: {', '.join(WEIGHT_SCHEMES)}")
        if self.group_size not in GROUP_SIZES:
            raise GlassExportError(f"--group-size must be one of {', '.join(map(str, GROUP_SIZES))}, got {self.group_size}",
                                   "32 is the usual choice (as llama.cpp's Q4_0 and ONNX Runtime GenAI's int4)")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise GlassExportError(f"--accuracy-level must be 1 or 4, got {self.accuracy_level}",
                                   "4: int8 activations (fast), 1: float activations")

    @property
    def quantized(self) -> bool:
        return self.weights != "fp32"

    @property
    def bits(self) -> int:
        return {"int8": 8, "int4": 4}[self.weights]

    @property
    def int8_activations(self) -> bool:
        return self.quantized and self.accuracy_level == 4

    def check_dims(self, named_dims: dict[str, int]) -> None:
        """Every quantised matmul's input dimension must be a multiple of the group size."""
        if not self.quantized:
            return
        for name, size in named_dims.items():
            if size % self.group_size:
                fitting = [g for g in GROUP_SIZES if all(v % g == 0 for v in named_dims.values())]
                fix = (f"use --group-size {' or '.join(map(str, fitting))}" if fitting
                       else "this model's sizes fit no supported group size; export it with --quant fp32")
                raise GlassExportError(f"the {name} ({size}) is not a multiple of --group-size {self.group_size}", fix)

    def to_dict(self) -> dict:
        if not self.quantized:
            return {"weights": "fp32"}
        return {"weights": self.weights, "bits": self.bits, "group_size": self.group_size, "symmetric": True,
                "zero_point": 1 << (self.bits - 1), "scale_dtype": "float16 values in float32 tensors",
                "accuracy_level": self.accuracy_level, "activations": ACCURACY_LEVELS[self.accuracy_level]}

    @classmethod
    def from_dict(cls, data: dict) -> "QuantScheme":
        if data.get("weights", "fp32") == "fp32":
            return cls()
        return cls(data["weights"], int(data["group_size"]), int(data["accuracy_level"]))

    def describe(self) -> str:
        if not self.quantized:
            return "fp32"
        return f"{self.weights} (group {self.group_size}, accuracy level {self.accuracy_level})"


@dataclass
class QuantizedRows:
    """Rows quantised along their columns: codes [rows, cols * bits / 8], scales [rows, cols / group]."""

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape[0], self.codes.shape[1] * 8 // self.bits

    def blocked_codes(self) -> np.ndarray:
        """MatMulNBits' B: [rows, cols / group, group * bits / 8]."""
        rows, cols = self.shape
        return self.codes.reshape(rows, cols // self.group_size, self.group_size * self.bits // 8)


def quantize_rows(weight: np.ndarray, bits: int, group_size: int) -> QuantizedRows:
    """Quantise each row of weight [rows, cols] along cols with ONNX Runtime's block quantiser."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    weight = np.ascontiguousarray(weight, dtype=np.float32)
    rows, cols = weight.shape
    if cols % group_size:
        raise GlassExportError(f"internal: {cols} columns are not a multiple of the group size {group_size}")
    blocks = cols // group_size
    codes = np.zeros((rows, blocks, group_size * bits // 8), dtype=np.uint8)
    scales = np.zeros((rows, blocks), dtype=np.float32)
    zero_points = np.zeros((rows, blocks), dtype=np.uint8)  # unused: symmetric
    quantize = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    # ORT quantises B [K, N] column by column, i.e. our rows; its codes are replaced below.
    quantize(codes, np.ascontiguousarray(weight.T), scales, zero_points, group_size, rows, cols, True)
    with np.errstate(over="ignore"):
        half_scales = scales.astype(np.float16)
    if not np.isfinite(half_scales).all():
        raise GlassExportError("a weight is too large for float16 quantisation scales (|w| > 2.6e5)",
                               "export this model with --quant fp32")
    scales = half_scales.astype(np.float32)
    zero = 1 << (bits - 1)
    blocks_of = weight.reshape(rows, blocks, group_size)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scales[..., None] != 0, np.rint(blocks_of / scales[..., None]), 0.0)
    q = (np.clip(q, -zero, zero - 1) + zero).astype(np.uint8)
    if bits == 4:
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    return QuantizedRows(np.ascontiguousarray(q.reshape(rows, -1)), scales, bits, group_size)


def dequantize_rows(q: QuantizedRows) -> np.ndarray:
    """The float rows the codes stand for (glass_ops.torch_ops.dequantize: one definition)."""
    from glass_ops.torch_ops import dequantize

    return dequantize(torch.from_numpy(q.blocked_codes()), torch.from_numpy(q.scales), q.bits).numpy()


def fake_quantize_activations(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x as the int8 kernels see it (MLAS CompInt8's rules); defined once in glass_ops."""
    from glass_ops.torch_ops import quantize_activations

    return quantize_activations(x, group_size)


class QuantizedLinear(torch.nn.Module):
    """The eager form of a quantised matmul: dequantised weight, optionally quantised input. `rows` are the
    codes behind the weight (its rows; for a neuron-contiguous W_down, its columns), for the decode's
    int8 down projection (eager.py)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation_group: int | None,
                 rows: QuantizedRows | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.activation_group = activation_group
        self.rows = rows

    def forward(self, x):
        if self.activation_group is not None:
            x = fake_quantize_activations(x, self.activation_group)
        return F.linear(x, self.weight, self.bias)


def dequantized(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    q = quantize_rows(weight.detach().float().cpu().numpy(), scheme.bits, scheme.group_size)
    return torch.from_numpy(dequantize_rows(q))


def glass_reads_tied_table(model) -> bool:
    """Whether an ExecuTorch program reads the model's embedding table through the glass ops
    (export/graphs.py, TiedTable): when the LM head is tied to it, with an even row count (the int8 LM
    head tiles rows in pairs). The program then stores the table once, the LM head and (quantised)
    the lookup quantised as on ONNX; an untied model keeps XNNPACK's LM head and the stock lookup."""
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    return (head is not None and getattr(head, "weight", None) is embedding.weight
            and embedding.weight.shape[0] % 2 == 0)


def torchao_quantize(model, scheme: QuantScheme, include_ffn: bool = False, embedding: bool = True) -> None:
    """ExecuTorch's quantisation of every nn.Linear outside the FFNs (inside them too with include_ffn:
    dense twins) and of the nn.Embedding (unless embedding is False), in place (torchao). Modules of
    other types (the glass FFN, a TiedTable's readers, the eager reference's QuantizedLinear) are left
    alone."""
    from torchao.quantization import quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig

    weight_dtype = torch.int4 if scheme.bits == 4 else torch.int8
    # XNNPACK runs 4-bit weights per group, with bfloat16 scales (it casts them), and 8-bit weights per
    # output channel; the eager reference must use the very same scales.
    if scheme.bits == 4:
        linear = Int8DynamicActivationIntxWeightConfig(weight_dtype=weight_dtype,
                                                       weight_granularity=PerGroup(scheme.group_size),
                                                       weight_scale_dtype=torch.bfloat16)
    else:
        linear = Int8DynamicActivationIntxWeightConfig(weight_dtype=weight_dtype, weight_granularity=PerAxis(0))
    quantize_(model, linear, lambda module, fqn: isinstance(module, torch.nn.Linear)
              and (include_ffn or ".mlp." not in f".{fqn}."))
    if not embedding:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            # padding_idx only shapes gradients, but its extra argument hides the lookup from ExecuTorch's
            # pattern that turns it into the quantized embedding kernel
            module.padding_idx = None
    quantize_(model, IntxWeightOnlyConfig(weight_dtype=weight_dtype, granularity=PerGroup(scheme.group_size)),
              lambda module, fqn: isinstance(module, torch.nn.Embedding))


TORCHAO_DESCRIPTION = ("torchao Int8DynamicActivationIntxWeightConfig (XNNPACK, per-token int8 activations; int4 per "
                       "group with bfloat16 scales, int8 per channel) for the attention projections and the LM head; "
                       "IntxWeightOnlyConfig "
                       "(ExecuTorch quantized embedding kernels) for the embedding")


@torch.no_grad()
def quantize_model(model, scheme: QuantScheme, target: str = "onnx", sparse_decode: bool = True):
    """The eager reference of `scheme` on `target`: a copy of model with every quantised matmul replaced.

    Sparse artifacts keep the FFN in the glass layout on every target. Dense twins never gather, so
    their FFN is each runtime's stock dense matmul: ONNX's MatMulNBits (W_down quantised along m, as
    ONNX Runtime GenAI stores it), ExecuTorch's torchao linears. ONNX: every other Linear becomes
    MatMulNBits' form and the embedding GatherBlockQuantized's, a tied pair staying one tensor.
    ExecuTorch: torchao quantises the other Linears; a tied pair the glass ops read
    (glass_reads_tied_table) is quantised as on ONNX, any other embedding and LM head by torchao.
    fp32 returns model itself."""
    if not scheme.quantized:
        return model
    from .models import decoder_layers

    quantized = copy.deepcopy(model).eval()
    group = scheme.group_size if scheme.int8_activations else None

    def replace(parent, name: str, activation_group: int | None, transposed: bool = False):
        linear = getattr(parent, name)
        weight = linear.weight.detach().float().cpu()
        rows = quantize_rows((weight.T if transposed else weight).numpy(), scheme.bits, scheme.group_size)
        values = torch.from_numpy(dequantize_rows(rows))
        setattr(parent, name, QuantizedLinear(values.T.contiguous() if transposed else values, linear.bias,
                                              activation_group, rows))

    for layer in decoder_layers(quantized):
        mlp = layer.mlp
        if sparse_decode or target == "onnx":
            for name in ("gate_proj", "up_proj", "gate_up_proj"):
                if hasattr(mlp, name):
                    replace(mlp, name, group)
            if sparse_decode:  # neuron-contiguous: its columns, quantised along d, as the glass kernels read it
                replace(mlp, "down_proj", None, transposed=True)
            else:  # the ONNX dense twin: MatMulNBits, quantised along m
                replace(mlp, "down_proj", group)
        if target == "onnx":
            for name in ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj"):
                if hasattr(layer.self_attn, name):
                    replace(layer.self_attn, name, group)
    embedding = quantized.get_input_embeddings()
    head = quantized.get_output_embeddings()
    tied = head.weight is embedding.weight
    if target == "executorch" and not glass_reads_tied_table(quantized):
        if tied:  # the program stores the pair separately: the stock lookup and XNNPACK's LM head
            quantized.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=False)
            quantized.lm_head.weight.data = embedding.weight.data.clone()
        torchao_quantize(quantized, scheme, include_ffn=not sparse_decode)
        return quantized
    embedding.weight.data = dequantized(embedding.weight, scheme)
    new_head = QuantizedLinear(embedding.weight.data if tied else dequantized(head.weight, scheme), None, group)
    if tied:
        new_head.weight = embedding.weight  # still one tensor, as in the artifact
    quantized.lm_head = new_head
    if target == "executorch":  # a tied table the glass ops read; torchao takes the other linears
        torchao_quantize(quantized, scheme, include_ffn=not sparse_decode, embedding=False)
    return quantized
