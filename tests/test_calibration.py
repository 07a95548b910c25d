"""Global priors: formulas, determinism, file round trip and refusal of bad input."""

import json

import pytest
import torch

from glass_export.calibration import CorpusSource, compute_priors, self_generate_sequences, token_sequences
from glass_export.errors import GlassExportError
from glass_export.models import ffn_layers, model_info
from glass_export.priors import load_priors


@pytest.fixture(scope="module")
def sequences(tokenizer, example_dir):
    return token_sequences(CorpusSource([example_dir / "corpus.txt"]).documents(), tokenizer, 32, 256)


def test_priors_match_direct_computation(llama, sequences):
    priors = compute_priors(llama, sequences, batch_size=3)
    # Independent: one sequence at a time, z rebuilt from the neutral weights and hidden states.
    ffns = ffn_layers(llama)
    total = torch.zeros(len(ffns), ffns[0].gate.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for seq in sequences:
            out = llama(input_ids=torch.tensor([seq]), output_hidden_states=True)
            for layer, decoder_layer in enumerate(llama.model.layers):
                h = out.hidden_states[layer][0]
                x = decoder_layer.post_attention_layernorm(h + decoder_layer.self_attn(
                    decoder_layer.input_layernorm(h)[None],
                    position_embeddings=llama.model.rotary_emb(h[None], torch.arange(len(seq))[None]),
                    attention_mask=None,
                )[0][0])
                z = torch.nn.functional.silu(x @ ffns[layer].gate.T) * (x @ ffns[layer].up.T)
                total[layer] += z.abs().double().sum(dim=0)
    activation = total / (len(sequences) * len(sequences[0]))
    torch.testing.assert_close(priors.activation, activation.float(), rtol=1e-4, atol=1e-6)
    down_norms = torch.stack([f.down.norm(dim=0) for f in ffns])
    torch.testing.assert_close(priors.impact, activation.float() * down_norms, rtol=1e-4, atol=1e-6)
    assert priors.tokens == len(sequences) * 32


def test_calibration_is_deterministic_and_round_trips(llama, sequences, tmp_path):
    one = compute_priors(llama, sequences, batch_size=2, corpus={"kind": "files"})
    two = compute_priors(llama, sequences, batch_size=2, corpus={"kind": "files"})
    assert torch.equal(one.activation, two.activation) and torch.equal(one.impact, two.impact)
    path = tmp_path / "p.safetensors"
    one.save(path)
    back = load_priors(path)
    assert torch.equal(back.activation, one.activation) and torch.equal(back.impact, one.impact)
    assert back.model == model_info(llama) and back.tokens == one.tokens and back.corpus == {"kind": "files"}
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]  # no temporary left behind


def test_sequences_are_packed_with_bos_and_exact_length(tokenizer, example_dir):
    seqs = token_sequences(CorpusSource([example_dir / "corpus.txt"]).documents(), tokenizer, 50, 120)
    assert len(seqs) == 2 and all(len(s) == 50 and s[0] == tokenizer.bos_token_id for s in seqs)


def test_self_generated_text_is_seeded(llama, tokenizer):
    one = self_generate_sequences(llama, tokenizer, 40, 20, seed=3, batch_size=2)
    assert len(one) == 2 and all(len(s) == 20 for s in one)
    assert one == self_generate_sequences(llama, tokenizer, 40, 20, seed=3, batch_size=2)
    assert one != self_generate_sequences(llama, tokenizer, 40, 20, seed=4, batch_size=2)
    assert tokenizer.eos_token_id not in [t for s in one for t in s]


def test_bad_corpora_are_refused(tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(GlassExportError, match="corpus is empty"):
        token_sequences(CorpusSource([empty]).documents(), tokenizer, 16, 100)
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    with pytest.raises(GlassExportError, match="shorter than one sequence of 64"):
        token_sequences(CorpusSource([short]).documents(), tokenizer, 64, 1000)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(GlassExportError, match="bad.jsonl:2 is not valid JSON"):
        list(CorpusSource([bad_json]).documents())
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text(json.dumps({"body": "text"}) + "\n")
    with pytest.raises(GlassExportError, match="no field 'text'.*"):
        list(CorpusSource([no_field]).documents())
    assert list(CorpusSource([no_field], text_field="body").documents()) == ["text"]
    with pytest.raises(GlassExportError, match="does not exist"):
        list(CorpusSource([tmp_path / "missing.txt"]).documents())


def test_corrupt_priors_files_are_refused(llama, sequences, tmp_path):
    good = tmp_path / "good.safetensors"
    compute_priors(llama, sequences[:1]).save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    for path in (truncated, garbage):
        with pytest.raises(GlassExportError, match="not a valid glass-export priors file"):
            load_priors(path)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"activation": torch.zeros(2, 3)}, str(foreign))
    with pytest.raises(GlassExportError, match="no glass_priors metadata"):
        load_priors(foreign)
    with pytest.raises(GlassExportError, match="does not exist"):
        load_priors(tmp_path / "missing.safetensors")


def test_priors_of_another_shape_are_refused(llama, tokenizer, sequences):
    from glass_export.example import build_model

    wide = build_model("llama", 0, len(tokenizer), intermediate_size=128)
    priors = compute_priors(wide, sequences[:1])
    with pytest.raises(GlassExportError, match="intermediate_size is 128 there, 256 in this model"):
        priors.check_matches(model_info(llama))
