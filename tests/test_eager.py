"""Eager GLASS generation: the reference every exported artifact is compared with."""

import pytest
import torch

from glass_export.calibration import compute_priors
from glass_export.eager import GlassModel, record_ffn_activations
from glass_export.errors import GlassExportError
from glass_export.generation import generate
from glass_export.models import ffn_layers
from glass_export.selection import SelectionConfig, local_scores

PROMPT = [1, 40, 71, 100, 5, 9, 200, 33]
OTHER_PROMPT = [1, 300, 12, 77, 150]
STEPS = 32


@pytest.fixture(scope="module")
def priors_for(tokenizer):
    cache = {}

    def get(family, model):
        if family not in cache:
            gen = torch.Generator().manual_seed(5)
            sequences = torch.randint(4, len(tokenizer), (4, 16), generator=gen).tolist()
            cache[family] = compute_priors(model, sequences, batch_size=2)
        return cache[family]

    return get


def test_full_density_reproduces_dense_generation(family_model, priors_for):
    family, model = family_model
    dense = generate(GlassModel(model, SelectionConfig("dense")), PROMPT, STEPS, keep_logits=True)
    for method in ("griffin", "i-glass"):
        glass = GlassModel(model, SelectionConfig(method, 1.0), priors_for(family, model))
        result = generate(glass, PROMPT, STEPS, keep_logits=True)
        assert result.tokens == dense.tokens, method
        assert result.indices.shape == (model.config.num_hidden_layers, model.config.intermediate_size)
        for got, want in zip(result.step_logits, dense.step_logits):
            torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), rtol=0, atol=1e-5)


def test_sparse_decode_equals_dense_with_dropped_neurons_zeroed(family_model, priors_for):
    """Independent check of the gather path: zero the dropped neurons' z in the dense model."""
    family, model = family_model
    glass = GlassModel(model, SelectionConfig("a-glass", 0.5, 0.3), priors_for(family, model))
    result = generate(glass, PROMPT, 6, keep_logits=True)
    m = model.config.intermediate_size
    indices = torch.from_numpy(result.indices)
    masks = torch.zeros(glass.num_layers, m)
    masks.scatter_(1, indices, 1.0)

    def drop_in_generated_positions(_module, inputs, mask):
        z = inputs[0].clone()
        z[:, len(PROMPT):] *= mask  # the prompt itself was prefilled densely
        return (z,)

    handles = []
    for layer, ffn in enumerate(ffn_layers(model)):
        handles.append(ffn.down_input_module.register_forward_pre_hook(
            lambda mod, inputs, mask=masks[layer]: drop_in_generated_positions(mod, inputs, mask)))
    try:
        ids = torch.tensor([PROMPT + result.tokens[:-1]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    # step 0 comes from the dense prefill; steps 1.. from sparse decode of the previous token
    for step in range(1, len(result.tokens)):
        torch.testing.assert_close(torch.from_numpy(result.step_logits[step]), logits[len(PROMPT) - 1 + step],
                                   rtol=1e-4, atol=1e-4)
    assert indices.shape == (glass.num_layers, m // 2)
    assert not torch.equal(indices[0], torch.arange(m // 2))  # a real selection, not a prefix


def test_prefill_local_scores_come_from_the_prompt_activations(llama):
    ffns = ffn_layers(llama)
    seen = {}
    with record_ffn_activations(ffns, lambda layer, z: seen.setdefault(layer, z[0])):
        llama(input_ids=torch.tensor([PROMPT]))
    glass = GlassModel(llama, SelectionConfig("griffin", 0.25))
    _, _, local, indices = glass.prefill_tensors(torch.tensor([PROMPT]))
    for layer in range(len(ffns)):
        torch.testing.assert_close(local[layer], local_scores(seen[layer]), rtol=1e-6, atol=1e-6)
        top = torch.sort(torch.sort(local[layer], descending=True, stable=True).indices[: indices.shape[1]]).values
        assert torch.equal(indices[layer], top)


def test_lambda_extremes(llama, priors_for):
    import numpy as np

    priors = priors_for("llama", llama)
    griffin = generate(GlassModel(llama, SelectionConfig("griffin", 0.5)), PROMPT, 12)
    a_one = generate(GlassModel(llama, SelectionConfig("a-glass", 0.5, 1.0), priors), PROMPT, 12)
    assert a_one.tokens == griffin.tokens and np.array_equal(a_one.indices, griffin.indices)
    static = GlassModel(llama, SelectionConfig("static-a", 0.5), priors)
    a_zero = GlassModel(llama, SelectionConfig("a-glass", 0.5, 0.0), priors)
    first = generate(static, PROMPT, 4)
    assert np.array_equal(first.indices, generate(a_zero, PROMPT, 4).indices)
    assert np.array_equal(first.indices, generate(static, OTHER_PROMPT, 4).indices)
    # a-glass in between really depends on the prompt
    mid = GlassModel(llama, SelectionConfig("a-glass", 0.5, 0.5), priors)
    assert not np.array_equal(generate(mid, PROMPT, 2).indices, generate(mid, OTHER_PROMPT, 2).indices)


def test_eos_stops_generation(llama):
    glass = GlassModel(llama, SelectionConfig("griffin", 0.5))
    free = generate(glass, PROMPT, 10)
    stopped = generate(glass, PROMPT, 10, eos_ids={free.tokens[3]})
    assert stopped.tokens == free.tokens[: free.tokens.index(free.tokens[3]) + 1]


def test_forced_indices_replace_the_backends_own(llama):
    """verify's decode parity feeds an artifact's kept set: the decode must really use it."""
    import numpy as np

    glass = GlassModel(llama, SelectionConfig("griffin", 0.25))
    own = generate(glass, PROMPT, 6, keep_logits=True)
    other = np.sort(np.stack([np.random.default_rng(layer).permutation(glass.m)[: glass.k] for layer in range(2)]), 1)
    forced = generate(glass, PROMPT, 6, keep_logits=True, indices=other)
    np.testing.assert_array_equal(forced.indices, own.indices)  # prefill still reports its own selection
    np.testing.assert_array_equal(forced.step_logits[0], own.step_logits[0])  # first token: dense prefill
    assert np.abs(forced.step_logits[1] - own.step_logits[1]).max() > 1e-3  # decode used `other`


def test_bad_generation_input(llama, tokenizer):
    from glass_export.example import build_model

    glass = GlassModel(llama, SelectionConfig("griffin", 0.5))
    with pytest.raises(GlassExportError, match="prompt is empty"):
        generate(glass, [], 4)
    with pytest.raises(GlassExportError, match="needs global priors"):
        GlassModel(llama, SelectionConfig("i-glass", 0.5))
    other = build_model("llama", seed=1, vocab_size=len(tokenizer))
    priors = compute_priors(other, [[1, 2, 3, 4]])
    with pytest.raises(GlassExportError, match="another model"):
        GlassModel(llama, SelectionConfig("i-glass", 0.5), priors)
