"""`convert-gguf`: a GGUF checkpoint becomes a regular model directory with the same weights and tokenizer.

The test writes a GGUF of the tiny Llama with the `gguf` package, the way llama.cpp's converter
lays one out (tensor names from gguf's own name map, Q/K rows permuted for its rope layout,
a byte-level BPE vocabulary), then checks that the converted model computes the same logits.
"""

import json

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from glass_export.cli import main
from glass_export.errors import GlassExportError
from glass_export.gguf_import import SOURCE_FILE, convert_gguf
from glass_export.models import load_model, load_tokenizer


def llama_cpp_rope_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores Q and K rows interleaved per head for its rope; transformers undoes it on load."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_llama_gguf(model, tokenizer, path, quantize_ffn: bool = False) -> None:
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    vocab = tokenizer.backend_tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = tensor.numpy().astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = llama_cpp_rope_permute(data, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = llama_cpp_rope_permute(data, cfg.num_key_value_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if quantize_ffn and "mlp" in hf_name:
            writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory, llama, tokenizer):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.f32.gguf"
    write_llama_gguf(llama, tokenizer, path)
    return path


def test_converted_model_matches_the_source_weights_and_tokenizer(llama_gguf, llama, tokenizer, tmp_path):
    source = convert_gguf(llama_gguf, tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    ids = torch.tensor([[1, 17, 42, 99, 5, 230, 7]])
    with torch.no_grad():
        expected, got = llama(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())
    text = "The river runs to the sea."
    converted_tok = load_tokenizer(tmp_path / "hf")
    assert converted_tok(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    recorded = json.loads((tmp_path / "hf" / SOURCE_FILE).read_text())
    assert recorded == source and recorded["tensor_types"] == {"F32": source["tensor_types"]["F32"]}
    assert len(recorded["sha256"]) == 64 and recorded["model_type"] == "llama"


def test_quantised_tensors_are_dequantised_within_their_step(llama, tokenizer, tmp_path):
    path = tmp_path / "tiny-llama.q8.gguf"
    write_llama_gguf(llama, tokenizer, path, quantize_ffn=True)
    source = convert_gguf(path, tmp_path / "hf")
    assert source["tensor_types"]["Q8_0"] == 3 * llama.config.num_hidden_layers
    converted = load_model(tmp_path / "hf")
    for name, tensor in llama.state_dict().items():
        if "mlp" in name:
            got = converted.state_dict()[name]
            # Q8_0: 32 values share one scale max|x|/127 stored in fp16: the error is half a step plus
            # the scale's rounding (2^-11 relative) times up to 127 steps.
            step = tensor.abs().reshape(-1, 32).amax(dim=1, keepdim=True) / 127
            assert ((got - tensor).abs().reshape(-1, 32) <= step * (0.5 + 127 * 2**-11)).all(), name
            assert not torch.equal(got, tensor)  # really went through Q8_0


def test_cli_converts_and_refuses_bad_input(llama_gguf, tmp_path):
    runner = CliRunner()
    out = tmp_path / "hf"
    result = runner.invoke(main, ["convert-gguf", str(llama_gguf), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()

    again = runner.invoke(main, ["convert-gguf", str(llama_gguf), "--out", str(out)])
    assert again.exit_code == 1 and "not empty" in again.output

    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf file")
    bad = runner.invoke(main, ["convert-gguf", str(not_gguf), "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "no GGUF magic" in bad.output
    assert not (tmp_path / "bad").exists()

    missing = runner.invoke(main, ["convert-gguf", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "bad")])
    assert missing.exit_code != 0 and "does not exist" in missing.output


def test_unsupported_architecture_is_refused_before_loading(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_layer_norm_eps(1e-5)
    writer.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GlassExportError, match="gpt2"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
