"""Model adapters: one neutral FFN view over the supported Hugging Face families."""

from .adapter import (
    SUPPORTED_MODEL_TYPES,
    FFNLayer,
    ModelInfo,
    apply_activation,
    decoder_layers,
    ffn_layers,
    load_model,
    load_tokenizer,
    model_fingerprint,
    model_info,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "FFNLayer",
    "ModelInfo",
    "apply_activation",
    "decoder_layers",
    "ffn_layers",
    "load_model",
    "load_tokenizer",
    "model_fingerprint",
    "model_info",
]
