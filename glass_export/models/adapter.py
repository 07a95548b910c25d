"""Model adapter: load a local Hugging Face causal LM and expose each decoder
layer's FFN in one neutral form (gate, up, down weights and the activation).

Supported families all use a gated FFN  y = (act(x Wg^T) * (x Wu^T)) Wd^T;
Phi-3 stores Wg and Wu fused in one `gate_up_proj` (gate first).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import GlassExportError

# Offline by construction: nothing in glass-export may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# model_type -> name of the FFN layout
SUPPORTED_MODEL_TYPES = {
    "llama": "separate",
    "mistral": "separate",
    "qwen2": "separate",
    "qwen3": "separate",
    "gemma": "separate",
    "gemma2": "separate",
    "gemma3_text": "separate",
    "phi3": "fused_gate_up",
}

# Hugging Face activation names -> the activation names glass-export kernels implement.
ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def apply_activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    raise GlassExportError(f"unknown activation {name!r}")


@dataclass
class FFNLayer:
    """One decoder layer's FFN: neuron i is row i of gate and up and column i of down."""

    module: torch.nn.Module
    gate: torch.Tensor  # [m, d]
    up: torch.Tensor  # [m, d]
    down: torch.Tensor  # [d, m]
    activation: str  # "silu" | "gelu_tanh"
    act_fn: torch.nn.Module  # the model's own activation module (bit-exact with its forward)
    input_quant_group: int | None = None  # quantised reference: gate/up see int8-quantised inputs

    @property
    def down_input_module(self) -> torch.nn.Module:
        """The module whose input is z = act(x Wg^T) * (x Wu^T)."""
        return self.module.down_proj


@dataclass(frozen=True)
class ModelInfo:
    """What a priors file or an artifact records about the model it belongs to."""

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    activation: str
    fingerprint: str

    def to_dict(self) -> dict:
        return asdict(self)


def supported_list() -> str:
    return ", ".join(sorted(SUPPORTED_MODEL_TYPES))


def check_supported_config(config) -> str:
    """Returns the canonical activation name, or raises a clear error."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        hint = f"supported model types: {supported_list()}"
        if model_type == "gemma3":
            hint += " (for Gemma 3 load the text-only model, model_type gemma3_text)"
        raise GlassExportError(f"unsupported architecture {model_type!r}", hint)
    if getattr(config, "mlp_bias", False):
        raise GlassExportError(
            f"{model_type} with mlp_bias=True is not supported", "GLASS kernels assume bias-free FFN projections"
        )
    hf_act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if hf_act not in ACTIVATIONS:
        raise GlassExportError(
            f"unsupported FFN activation {hf_act!r} in {model_type}",
            f"supported activations: {', '.join(sorted(ACTIVATIONS))}",
        )
    return ACTIVATIONS[hf_act]


def sliding_window(config) -> int | None:
    """The attention window of a model whose layers (some or all) attend to recent tokens only."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def decoder_layers(model) -> list:
    try:
        return list(model.model.layers)
    except AttributeError as exc:  # pragma: no cover - guarded by check_supported_config
        raise GlassExportError(f"{type(model).__name__} has no model.layers") from exc


def ffn_layers(model) -> list[FFNLayer]:
    """The FFN of every decoder layer in the neutral form."""
    activation = check_supported_config(model.config)
    layout = SUPPORTED_MODEL_TYPES[model.config.model_type]
    result = []
    for layer in decoder_layers(model):
        mlp = layer.mlp
        if layout == "fused_gate_up":
            m = mlp.down_proj.weight.shape[1]
            gate, up = mlp.gate_up_proj.weight[:m], mlp.gate_up_proj.weight[m:]
            act_fn, gate_module = mlp.activation_fn, mlp.gate_up_proj
        else:
            gate, up, act_fn, gate_module = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.act_fn, mlp.gate_proj
        group = getattr(gate_module, "activation_group", None)  # set on quantization.QuantizedLinear
        result.append(FFNLayer(mlp, gate, up, mlp.down_proj.weight, activation, act_fn, group))
    return result


def model_fingerprint(model) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def model_info(model) -> ModelInfo:
    activation = check_supported_config(model.config)
    ffns = ffn_layers(model)
    return ModelInfo(
        model_type=model.config.model_type,
        num_layers=len(ffns),
        hidden_size=ffns[0].gate.shape[1],
        intermediate_size=ffns[0].gate.shape[0],
        activation=activation,
        fingerprint=model_fingerprint(model),
    )


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise GlassExportError(f"model directory {path} does not exist", "pass a local Hugging Face model directory")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise GlassExportError(
            f"{path} is not a Hugging Face model directory (no config.json)",
            "pass the directory written by save_pretrained(), or build one with `glass-export example`",
        )


def load_model(path: str | os.PathLike, dtype: str = "float32"):
    """Load a supported causal LM from a local directory (never from a hub), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    _check_model_dir(path)
    if dtype not in DTYPES:
        raise GlassExportError(f"unknown dtype {dtype!r}", f"choose one of: {', '.join(DTYPES)}")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, JSON and encoding errors
        raise GlassExportError(f"cannot read the model config {path / 'config.json'}: {type(exc).__name__}: {exc}",
                               "restore config.json from the model's source") from exc
    check_supported_config(config)
    if not any(path.glob("*.safetensors")):
        raise GlassExportError(f"{path} has no .safetensors weights",
                               "glass-export loads only safetensors (never pickled .bin files): convert the weights, "
                               "e.g. save_pretrained(..., safe_serialization=True)")
    try:
        # safetensors only (no pickle) and never the repository's own code
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=DTYPES[dtype],
                                                     use_safetensors=True, trust_remote_code=False)
    except Exception as exc:  # truncated or corrupt files, weights that do not fit the config, ...
        raise GlassExportError(
            f"cannot load the model in {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
            "the weights are damaged or do not match config.json: restore them from the model's source",
        ) from exc
    return model.eval()


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    path = Path(path)
    _check_model_dir(path)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # tokenizers raises its own exception types for damaged files
        raise GlassExportError(
            f"no usable tokenizer in {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
            "save the tokenizer next to the model (tokenizer.json) with save_pretrained()"
        ) from exc
