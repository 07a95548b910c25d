"""Shared fixtures: tiny seeded models of every supported family, built offline."""

import logging

import pytest

from glass_export.example import FAMILIES, build_model, build_tokenizer, write_example

logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session", params=FAMILIES)
def family_model(request, tokenizer):
    """(family, model) for every supported family."""
    return request.param, build_model(request.param, seed=0, vocab_size=len(tokenizer))


@pytest.fixture(scope="session")
def llama(tokenizer):
    return build_model("llama", seed=0, vocab_size=len(tokenizer))


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory):
    """A saved built-in example (model/ with tokenizer, corpus.txt)."""
    out = tmp_path_factory.mktemp("example") / "ex"
    write_example(out, family="llama", seed=0)
    return out
