"""Global priors from a calibration corpus or from text the model generates itself.

A-GLASS prior: a_i = mean over tokens of |z_i|.
I-GLASS prior: g_i = a_i * ||W_down[:, i]||_2 (mean magnitude of neuron i's output contribution).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .eager import record_ffn_activations
from .errors import GlassExportError
from .io_utils import JSONL_SUFFIXES, jsonl_records, read_text
from .models import ffn_layers, model_info
from .priors import Priors

# Sequences per forward pass, in self-generation and in the priors pass. On SmolLM2-135M (2 cores, --seq-len
# 512) self-generation ran 75 tokens/s at 8 and 133 at 32 (each step re-reads the weights for the whole batch).
DEFAULT_BATCH_SIZE = 32

# Short seeds for self-generated calibration text (the paper samples from short seeds).
SELF_GENERATE_SEEDS = ["The", "In", "Once upon a time", "A", "Today", "Here is", "Why", "It was"]

ProgressFn = Callable[[int], None]


@dataclass
class CorpusSource:
    files: list[Path]
    text_field: str = "text"

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()[:16]

    def check(self) -> None:
        """Before any work: every file exists."""
        for path in self.files:
            if not path.is_file():
                raise GlassExportError(f"corpus file {path} does not exist", "pass existing text or JSONL files to --data")

    def documents(self) -> Iterator[str]:
        for path in self.files:
            if path.suffix.lower() in JSONL_SUFFIXES:
                yield from self._jsonl_documents(path)
            else:
                # Plain text: paragraphs (blank-line separated) are documents.
                for paragraph in read_text(path, "corpus file").split("\n\n"):
                    if paragraph.strip():
                        yield paragraph.strip()

    def _jsonl_documents(self, path: Path) -> Iterator[str]:
        for line_no, record in jsonl_records(path, "corpus file"):
            if not isinstance(record, dict) or self.text_field not in record:
                raise GlassExportError(
                    f"{path}:{line_no} has no field {self.text_field!r}", "name the text field with --text-field"
                )
            text = record[self.text_field]
            if not isinstance(text, str):
                raise GlassExportError(f"{path}:{line_no} field {self.text_field!r} is not a string")
            if text.strip():
                yield text


def token_sequences(documents: Iterable[str], tokenizer, seq_len: int, max_tokens: int) -> list[list[int]]:
    """Pack documents into sequences of exactly seq_len tokens, at most max_tokens in all.

    Documents are joined with the EOS token; each sequence starts with BOS when
    the tokenizer has one.  A last incomplete sequence is dropped.
    """
    if seq_len < 2:
        raise GlassExportError(f"--seq-len must be at least 2, got {seq_len}")
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    body = seq_len - (1 if bos is not None else 0)
    wanted = max(1, max_tokens // seq_len)
    sequences: list[list[int]] = []
    buffer: list[int] = []
    total_tokens = 0
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        total_tokens += len(ids)
        buffer.extend(ids)
        if eos is not None:
            buffer.append(eos)
        while len(buffer) >= body and len(sequences) < wanted:
            sequences.append(([bos] if bos is not None else []) + buffer[:body])
            buffer = buffer[body:]
        if len(sequences) >= wanted:
            break
    if not sequences:
        if total_tokens == 0:
            raise GlassExportError("the calibration corpus is empty", "pass files with text to --data")
        raise GlassExportError(
            f"the calibration corpus has {total_tokens} tokens, shorter than one sequence of {seq_len}",
            "lower --seq-len or add more text",
        )
    return sequences


@torch.no_grad()
def self_generate_sequences(
    model, tokenizer, num_tokens: int, seq_len: int, seed: int, batch_size: int, progress: ProgressFn | None = None
) -> list[list[int]]:
    """Sample calibration text from the model itself (temperature 1, EOS suppressed), seeded."""
    count = max(1, -(-num_tokens // seq_len))
    gen = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    sequences = []
    for start in range(0, count, batch_size):
        seeds = [SELF_GENERATE_SEEDS[i % len(SELF_GENERATE_SEEDS)] for i in range(start, min(count, start + batch_size))]
        encoded = [tokenizer(s)["input_ids"][: seq_len - 1] for s in seeds]
        # Left-pad-free batching: cut every seed to the shortest one.
        shortest = min(len(e) for e in encoded)
        batch = torch.tensor([e[:shortest] for e in encoded])
        out = model(input_ids=batch, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]
        tokens = [batch]
        if progress is not None:
            progress(batch.numel())
        new_tokens = seq_len - shortest
        for step in range(new_tokens):
            logits = logits.float()
            if eos is not None:
                logits[:, eos] = float("-inf")
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen)
            tokens.append(nxt)
            if progress is not None:
                progress(nxt.shape[0])
            if step < new_tokens - 1:
                out = model(input_ids=nxt, cache=cache, use_cache=True)
                cache, logits = out.cache, out.logits[:, -1]
        sequences.extend(torch.cat(tokens, dim=1).tolist())
    return sequences


@torch.no_grad()
def compute_priors(
    model, sequences: list[list[int]], batch_size: int = DEFAULT_BATCH_SIZE, progress: ProgressFn | None = None,
    corpus: dict | None = None
) -> Priors:
    """Stream the sequences through the model and average |z| per neuron and layer."""
    ffns = ffn_layers(model)
    info = model_info(model)
    abs_sum = torch.zeros(info.num_layers, info.intermediate_size, dtype=torch.float64)
    tokens = 0

    def accumulate(layer: int, z: torch.Tensor) -> None:
        abs_sum[layer] += z.abs().double().reshape(-1, z.shape[-1]).sum(dim=0)

    with record_ffn_activations(ffns, accumulate):
        for start in range(0, len(sequences), batch_size):
            batch = torch.tensor(sequences[start : start + batch_size])
            model(input_ids=batch, use_cache=False)
            tokens += batch.numel()
            if progress is not None:
                progress(batch.numel())
    activation = abs_sum / tokens
    down_norms = torch.stack([torch.linalg.vector_norm(f.down.double(), dim=0) for f in ffns])
    return Priors(
        activation=activation.float(),
        impact=(activation * down_norms).float(),
        model=info,
        tokens=tokens,
        corpus=corpus or {},
    )


def check_budget(tokens: int, seq_len: int, option: str) -> None:
    if seq_len < 2:
        raise GlassExportError(f"--seq-len must be at least 2, got {seq_len}")
    if tokens < seq_len:
        raise GlassExportError(f"{option} {tokens} is less than one sequence of --seq-len {seq_len} tokens",
                               f"pass {option} {seq_len} or more, or a smaller --seq-len")


# progress(description, total) -> advance(n): how a caller shows long work (None: silent)
Progress = Callable[[str, int], ProgressFn]


def run_calibration(model_dir: Path, out: Path, data: list[Path] = (), text_field: str = "text",
                    self_generate: int | None = None, seed: int = 0, max_tokens: int = 100_000, seq_len: int = 512,
                    batch_size: int = DEFAULT_BATCH_SIZE, dtype: str = "float32", force: bool = False,
                    progress: Progress | None = None) -> Priors:
    """`glass-export calibrate`: check every input and --out first, then compute and write the priors."""
    from .models import load_model, load_tokenizer
    from .outputs import OutputPlan

    if bool(data) == (self_generate is not None):
        raise GlassExportError("pass exactly one of --data and --self-generate",
                               "e.g. --data corpus.txt or --self-generate 100000")
    source = CorpusSource([Path(p) for p in data], text_field=text_field) if data else None
    if source is not None:
        source.check()
        check_budget(max_tokens, seq_len, "--max-tokens")
    else:
        check_budget(self_generate, seq_len, "--self-generate")
    plan = OutputPlan(Path(out), kind="priors", force=force, inputs=[Path(model_dir), *(Path(p) for p in data)])
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=dtype)
    track = progress or (lambda _description, _total: None)
    if source is not None:
        sequences = token_sequences(source.documents(), tokenizer, seq_len, max_tokens)
        corpus = describe_corpus_files(source, seq_len, len(sequences))
    else:
        count = self_generate // seq_len
        sequences = self_generate_sequences(model, tokenizer, count * seq_len, seq_len, seed, batch_size,
                                            track("self-generating", count * seq_len))
        corpus = describe_self_generated(sequences, seq_len, seed)
    priors = compute_priors(model, sequences, batch_size, track("calibrating", sum(len(s) for s in sequences)), corpus)
    with plan.file() as tmp:
        priors.save(tmp)
    return priors


def describe_corpus_files(source: CorpusSource, seq_len: int, sequences: int) -> dict:
    return {
        "kind": "files",
        "files": [p.name for p in source.files],
        "fingerprint": source.fingerprint(),
        "text_field": source.text_field,
        "seq_len": seq_len,
        "sequences": sequences,
    }


def describe_self_generated(sequences: list[list[int]], seq_len: int, seed: int) -> dict:
    digest = hashlib.sha256(json.dumps(sequences).encode()).hexdigest()[:16]
    return {
        "kind": "self-generated",
        "seed": seed,
        "seeds": SELF_GENERATE_SEEDS,
        "temperature": 1.0,
        "fingerprint": digest,
        "seq_len": seq_len,
        "sequences": len(sequences),
    }
