"""A built-in example: tiny models of every supported family, built offline.

The weights are random (seeded) and the tokenizer is a byte-level BPE trained
on the small bundled corpus, so the whole tool chain can be exercised with no
download.  Random weights say nothing about quality; see docs/ for a real model.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .errors import GlassExportError
from .models.adapter import SUPPORTED_MODEL_TYPES
from .outputs import OutputPlan

FAMILIES = tuple(SUPPORTED_MODEL_TYPES)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def corpus_text() -> str:
    return resources.files("glass_export.data").joinpath("tiny_corpus.txt").read_text(encoding="utf-8")


def build_tokenizer(vocab_size: int = 384):
    """Byte-level BPE trained on the bundled corpus (deterministic), as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_text().split("\n\n"), trainer=trainer)
    # Prepend <s> like Llama-family tokenizers do.
    from tokenizers import processors

    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_config(family: str, vocab_size: int, bos: int = 1, eos: int = 2, pad: int = 3, **overrides):
    """A transformers config of the family with a tiny, fixed shape."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    if family not in FAMILIES:
        raise GlassExportError(f"no built-in example for {family!r}", f"choose one of: {', '.join(FAMILIES)}")
    if family.startswith("gemma") or family == "qwen3":
        common["head_dim"] = 16
    if family in ("gemma2", "gemma3_text"):
        common["sliding_window"] = 64
    common.update(overrides)
    return transformers.AutoConfig.for_model(family, **common)


def build_model(family: str = "llama", seed: int = 0, vocab_size: int = 384, **overrides):
    """A randomly initialised tiny causal LM (fp32, eval mode), the same for the same seed."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(family, vocab_size, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # The default init (std 0.02) gives near-uniform next-token distributions;
    # a larger spread makes the tiny model's outputs depend on its FFN neurons. Norm weights vary
    # around their identity value as in trained models (all-equal weights would make quantised
    # activations land exactly on rounding ties, which real models almost never do).
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * (1.0 / param.shape[1] ** 0.5))
            elif "norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return model.eval()


def write_example(out: Path, family: str = "llama", seed: int = 0, force: bool = False) -> Path:
    """Write out/model (weights, config, tokenizer) and out/corpus.txt; returns the model dir."""
    plan = OutputPlan(Path(out), kind="example", force=force)
    tokenizer = build_tokenizer()
    model = build_model(family, seed=seed, vocab_size=len(tokenizer))
    with plan.directory() as tmp:
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    return Path(out) / "model"
