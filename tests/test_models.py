"""The model adapter exposes every family's FFN in one neutral form."""

import pytest
import torch

from glass_export.errors import GlassExportError
from glass_export.models import apply_activation, ffn_layers, load_model, load_tokenizer, model_info


def test_neutral_ffn_reproduces_the_module(family_model):
    family, model = family_model
    ffns = ffn_layers(model)
    assert len(ffns) == model.config.num_hidden_layers
    x = torch.randn(3, 5, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for ffn in ffns:
        m = model.config.intermediate_size
        assert ffn.gate.shape == ffn.up.shape == (m, model.config.hidden_size)
        assert ffn.down.shape == (model.config.hidden_size, m)
        z = apply_activation(ffn.activation, x @ ffn.gate.T) * (x @ ffn.up.T)
        torch.testing.assert_close(z @ ffn.down.T, ffn.module(x), rtol=1e-5, atol=1e-5)
    expected_act = "gelu_tanh" if family.startswith("gemma") else "silu"
    assert model_info(model).activation == expected_act


def test_fingerprint_tracks_the_weights(llama, tokenizer):
    from glass_export.example import build_model

    assert model_info(llama).fingerprint == model_info(build_model("llama", 0, len(tokenizer))).fingerprint
    assert model_info(llama).fingerprint != model_info(build_model("llama", 1, len(tokenizer))).fingerprint


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(GlassExportError, match="(?s)unsupported architecture 'gpt2'.*llama.*phi3"):
        load_model(tmp_path)


def test_missing_or_non_model_directories(tmp_path):
    with pytest.raises(GlassExportError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(GlassExportError, match="no config.json"):
        load_model(tmp_path)
    with pytest.raises(GlassExportError, match="no config.json"):
        load_tokenizer(tmp_path)


def test_directory_without_tokenizer(tmp_path, llama):
    llama.save_pretrained(tmp_path)
    assert load_model(tmp_path).config.model_type == "llama"
    with pytest.raises(GlassExportError, match="tokenizer"):
        load_tokenizer(tmp_path)
