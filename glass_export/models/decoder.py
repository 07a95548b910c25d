"""A neutral description of a supported decoder, read off the Hugging Face model once.

Graph builders (the lean ONNX graph) work from this description instead of the family's Python
forward: sizes, the norms (Gemma's ``1 + w`` folded in), the attention's scale, soft-cap and
q/k norms, the rotary tables, the per-layer weights, the embedding and the LM head. Everything
family-specific that a builder needs is decided here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import GlassExportError
from .adapter import FFNLayer, check_supported_config, decoder_layers, ffn_layers

# Families whose RMSNorm multiplies by (1 + weight) and whose layers wrap attention and FFN in
# norms on both sides ("sandwich").
OFFSET_NORM_FAMILIES = ("gemma", "gemma2", "gemma3_text")
SANDWICH_FAMILIES = ("gemma2", "gemma3_text")


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().contiguous().numpy()


@dataclass
class LayerSpec:
    input_norm: np.ndarray  # [d] RMSNorm weights, offset folded in
    post_attention_norm: np.ndarray  # Llama-style: the pre-FFN norm; sandwich: the norm after attention
    pre_ffn_norm: np.ndarray | None  # sandwich only
    post_ffn_norm: np.ndarray | None  # sandwich only
    qkv: np.ndarray  # [(heads + 2 kv_heads) * head_dim, d]: q, k and v rows, as one projection
    qkv_bias: np.ndarray | None
    o: np.ndarray  # [d, heads * head_dim]
    q_norm: np.ndarray | None  # [head_dim] per-head RMSNorm before rotary (Qwen3, Gemma 3)
    k_norm: np.ndarray | None
    rotary: str  # key into DecoderSpec.rotary_tables
    ffn: FFNLayer


@dataclass
class DecoderSpec:
    model_type: str
    hidden_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    attention_scale: float
    attention_softcap: float  # 0: none
    final_logit_softcap: float  # 0: none
    sandwich_norms: bool
    embedding: np.ndarray  # [vocab, d]
    embed_scale: float
    lm_head: np.ndarray | None  # [vocab, d]; None when tied to the embedding
    final_norm: np.ndarray
    layers: list[LayerSpec]
    rotary_dim: int
    rotary_tables: dict  # name -> callable(max_seq_len) -> (cos [S, rotary_dim / 2], sin)

    @property
    def tied(self) -> bool:
        return self.lm_head is None

    def rotary_cache(self, name: str, max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rotary_tables[name](max_seq_len)


def _norm_weight(module, offset: bool) -> np.ndarray:
    weight = _array(module.weight)
    return weight + 1.0 if offset else weight


def rms_eps(config) -> float:
    return float(getattr(config, "rms_norm_eps", 1e-6))


def ffn_norm_name(model_type: str) -> str:
    """The decoder layer's attribute holding the RMSNorm right before its FFN."""
    return "pre_feedforward_layernorm" if model_type in SANDWICH_FAMILIES else "post_attention_layernorm"


def ffn_norm(layer, model_type: str) -> tuple[torch.nn.Module, bool]:
    """A decoder layer's pre-FFN RMSNorm module, and whether it multiplies by 1 + weight (Gemma)."""
    return getattr(layer, ffn_norm_name(model_type)), model_type in OFFSET_NORM_FAMILIES


def _rotary_table(model, layer_type: str | None):
    """cos/sin for positions [0, S) from the model's own rotary module (every rope scaling type)."""
    rotary = model.model.rotary_emb

    def table(max_seq_len: int):
        positions = torch.arange(max_seq_len)[None]
        probe = torch.zeros(1, 1, dtype=torch.float32)
        with torch.no_grad():
            cos, sin = rotary(probe, positions, layer_type) if layer_type is not None else rotary(probe, positions)
        cos, sin = _array(cos[0]), _array(sin[0])
        half = cos.shape[-1] // 2
        if not (np.array_equal(cos[:, :half], cos[:, half:]) and np.array_equal(sin[:, :half], sin[:, half:])):
            raise GlassExportError("this model's rotary embedding is not the rotate-half form the graph supports")
        return np.ascontiguousarray(cos[:, :half]), np.ascontiguousarray(sin[:, :half])

    return table


def decoder_spec(model) -> DecoderSpec:
    """Read a supported Hugging Face causal LM into a DecoderSpec."""
    config = model.config
    check_supported_config(config)
    family = config.model_type
    offset = family in OFFSET_NORM_FAMILIES
    sandwich = family in SANDWICH_FAMILIES
    layers = decoder_layers(model)
    ffns = ffn_layers(model)
    attention = layers[0].self_attn
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layer_types = getattr(config, "layer_types", None)
    multi_rope = isinstance(getattr(config, "rope_parameters", None), dict) and layer_types is not None and all(
        t in config.rope_parameters for t in set(layer_types))
    rotary_tables = {}
    if multi_rope:
        for layer_type in sorted(set(layer_types)):
            rotary_tables[layer_type] = _rotary_table(model, layer_type)
    else:
        rotary_tables["default"] = _rotary_table(model, None)
    cos, _ = next(iter(rotary_tables.values()))(2)
    rotary_dim = 2 * cos.shape[-1]

    specs = []
    for index, (layer, ffn) in enumerate(zip(layers, ffns)):
        attn = layer.self_attn
        if hasattr(attn, "qkv_proj"):
            qkv = _array(attn.qkv_proj.weight)
            bias = None if attn.qkv_proj.bias is None else _array(attn.qkv_proj.bias)
        else:
            qkv = np.concatenate([_array(attn.q_proj.weight), _array(attn.k_proj.weight), _array(attn.v_proj.weight)])
            biases = [p.bias for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
            bias = None if all(b is None for b in biases) else np.concatenate([
                _array(b) if b is not None else np.zeros(p.weight.shape[0], np.float32)
                for b, p in zip(biases, (attn.q_proj, attn.k_proj, attn.v_proj))])
        if getattr(attn.o_proj, "bias", None) is not None:
            raise GlassExportError(f"{family} with an output-projection bias is not supported")
        specs.append(LayerSpec(
            input_norm=_norm_weight(layer.input_layernorm, offset),
            post_attention_norm=_norm_weight(layer.post_attention_layernorm, offset),
            pre_ffn_norm=_norm_weight(layer.pre_feedforward_layernorm, offset) if sandwich else None,
            post_ffn_norm=_norm_weight(layer.post_feedforward_layernorm, offset) if sandwich else None,
            qkv=qkv,
            qkv_bias=bias,
            o=_array(attn.o_proj.weight),
            q_norm=_norm_weight(attn.q_norm, offset) if hasattr(attn, "q_norm") else None,
            k_norm=_norm_weight(attn.k_norm, offset) if hasattr(attn, "k_norm") else None,
            rotary=layer_types[index] if multi_rope else "default",
            ffn=ffn,
        ))

    embed = model.model.embed_tokens
    scale = float(getattr(embed, "scalar_embed_scale", 1.0))
    lm_head = model.get_output_embeddings().weight
    tied = lm_head is embed.weight or lm_head.data_ptr() == embed.weight.data_ptr()
    softcap = getattr(attention, "attn_logit_softcapping", None) or 0.0
    return DecoderSpec(
        model_type=family,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rms_eps=rms_eps(config),
        attention_scale=float(attention.scaling),
        attention_softcap=float(softcap),
        final_logit_softcap=float(getattr(config, "final_logit_softcapping", None) or 0.0),
        sandwich_norms=sandwich,
        embedding=_array(embed.weight),
        embed_scale=scale,
        lm_head=None if tied else _array(lm_head),
        final_norm=_norm_weight(model.model.norm, offset),
        layers=specs,
        rotary_dim=rotary_dim,
        rotary_tables=rotary_tables,
    )
