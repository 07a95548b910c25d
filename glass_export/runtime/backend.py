"""The backend interface every artifact runner implements, and the greedy loop over it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import GlassExportError
from ..export.manifest import load_manifest


@dataclass
class PrefillResult:
    logits: np.ndarray  # [T, vocab]
    indices: np.ndarray  # [layers, k] int64
    local_scores: np.ndarray  # [layers, m]
    state: object  # the runtime's KV cache handle


class Backend:
    """prefill(ids) -> PrefillResult; decode(token, position, indices, state) -> (logits [vocab], state)."""

    manifest: dict
    directory: Path

    def prefill(self, ids: list[int]) -> PrefillResult:
        raise NotImplementedError

    def decode(self, token: int, position: int, indices: np.ndarray, state):
        raise NotImplementedError

    @property
    def max_seq_len(self) -> int:
        return int(self.manifest["max_seq_len"])

    def tokenizer(self):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.directory, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise GlassExportError(f"artifact {self.directory} has no usable tokenizer: {exc}", "re-export it") from exc


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    step_logits: list[np.ndarray] = field(default_factory=list)
    prefill_logits: np.ndarray | None = None
    indices: np.ndarray | None = None
    local_scores: np.ndarray | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stopped_at_max_seq_len: bool = False

    @property
    def decode_tokens_per_second(self) -> float:
        steps = len(self.tokens) - 1  # the first token comes from the prefill logits
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


def generate(backend: Backend, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int] | None = None,
             on_token: Callable[[int], None] | None = None, keep_logits: bool = False) -> Generation:
    """Greedy: the first token from the dense prefill, the rest from sparse decode steps."""
    if not prompt_ids:
        raise GlassExportError("the prompt is empty", "pass a prompt with at least one token")
    if len(prompt_ids) > backend.max_seq_len:
        raise GlassExportError(
            f"the prompt has {len(prompt_ids)} tokens, more than the exported maximum of {backend.max_seq_len}",
            "shorten the prompt or re-export with a larger --max-seq-len",
        )
    eos_ids = eos_ids or set()
    result = Generation()
    start = time.perf_counter()
    pre = backend.prefill(list(prompt_ids))
    result.prefill_seconds = time.perf_counter() - start
    result.prefill_logits, result.indices, result.local_scores = pre.logits, pre.indices, pre.local_scores
    logits, state = pre.logits[-1], pre.state
    position = len(prompt_ids)
    start = time.perf_counter()
    for step in range(max_new_tokens):
        token = int(np.argmax(logits))
        result.tokens.append(token)
        if keep_logits:
            result.step_logits.append(logits)
        if on_token is not None:
            on_token(token)
        if token in eos_ids or step == max_new_tokens - 1:
            break
        if position >= backend.max_seq_len:
            result.stopped_at_max_seq_len = True
            break
        logits, state = backend.decode(token, position, pre.indices, state)
        position += 1
    result.decode_seconds = time.perf_counter() - start
    return result


def open_artifact(directory: str | Path, use_native: bool = True, threads: int | None = None) -> Backend:
    manifest = load_manifest(directory)
    target = manifest.get("target")
    if target == "onnx":
        from .onnx_backend import OnnxBackend

        return OnnxBackend(Path(directory), manifest, use_native=use_native, threads=threads)
    if target == "executorch":
        from .executorch_backend import ExecuTorchBackend

        return ExecuTorchBackend(Path(directory), manifest)
    raise GlassExportError(f"artifact target {target!r} is not supported by this glass-export", "re-export it")
