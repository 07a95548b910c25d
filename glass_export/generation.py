"""One backend interface and one generation loop, for eager PyTorch and every runtime.

A Backend is stateful, as ExecuTorch's and ONNX Runtime GenAI's runners are: `prefill(ids)` starts
a sequence (dense prompt pass, KV cache, kept neurons), `decode(token)` extends it by one token
with the kept neurons and returns the next-token logits. Each engine implements only its two
forward passes (`_prefill`, `_decode`); positions, limits and the kept set live here.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import GlassExportError

DEFAULT_MIN_NEW_TOKENS = 16  # eval / tune: generation may stop at EOS only after this many tokens


@dataclass
class PrefillResult:
    logits: np.ndarray  # [T, vocab] float32
    indices: np.ndarray  # [layers, k] int64, the kept neurons
    local_scores: np.ndarray  # [layers, m]


class Backend(ABC):
    """A loaded model that generates. Subclasses set `description` and `max_seq_len`."""

    description: str = ""  # what runs, e.g. "onnx, native kernels (libglass_ort_ops.so, avx512vnni)"
    max_seq_len: int = 0

    def __init__(self):
        self._position = 0
        self._indices: np.ndarray | None = None

    @abstractmethod
    def _prefill(self, ids: list[int]) -> PrefillResult:
        """Dense pass over the prompt from an empty cache."""

    @abstractmethod
    def _decode(self, token: int, position: int, indices: np.ndarray) -> np.ndarray:
        """Logits [vocab] of the next token after `token` at `position`, FFNs over `indices`."""

    def prefill(self, ids: list[int]) -> PrefillResult:
        if not ids:
            raise GlassExportError("the prompt is empty", "pass a prompt with at least one token")
        if len(ids) > self.max_seq_len:
            raise GlassExportError(
                f"the prompt has {len(ids)} tokens, more than the exported maximum of {self.max_seq_len}",
                "shorten the prompt or re-export with a larger --max-seq-len",
            )
        result = self._prefill(list(ids))
        self._position = len(ids)
        self._indices = result.indices
        return result

    def decode(self, token: int) -> np.ndarray:
        if self._indices is None:
            raise GlassExportError("internal: decode before prefill")
        if self._position >= self.max_seq_len:
            raise GlassExportError(f"the sequence reached the exported maximum of {self.max_seq_len} tokens")
        logits = self._decode(int(token), self._position, self._indices)
        self._position += 1
        return logits

    def use_indices(self, indices: np.ndarray) -> None:
        """Decode the rest of this sequence with these kept neurons (verify: the artifact's own set)."""
        self._indices = np.ascontiguousarray(indices, dtype=np.int64)

    @property
    def position(self) -> int:
        return self._position

    def close(self) -> None:
        """Release the runtime's sessions or program."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    step_logits: list[np.ndarray] = field(default_factory=list)  # the logits that chose each token
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
             on_token: Callable[[int], None] | None = None, keep_logits: bool = False,
             indices: np.ndarray | None = None, min_new_tokens: int = 0) -> Generation:
    """Greedy: the first token from the dense prefill, the rest from sparse decode steps.

    indices: decode with these kept neurons instead of the backend's own (verify feeds an
    artifact's set to the eager reference). min_new_tokens: the first that many tokens are never
    one of eos_ids (the next best token is taken; step_logits keep the unmasked logits)."""
    eos_ids = eos_ids or set()
    result = Generation()
    start = time.perf_counter()
    pre = backend.prefill(prompt_ids)
    result.prefill_seconds = time.perf_counter() - start
    result.prefill_logits, result.indices, result.local_scores = pre.logits, pre.indices, pre.local_scores
    if indices is not None:
        backend.use_indices(indices)
    logits = pre.logits[-1]
    start = time.perf_counter()
    for step in range(max_new_tokens):
        token = int(np.argmax(logits))
        if token in eos_ids and step < min_new_tokens:
            masked = np.array(logits, dtype=np.float32)
            masked[list(eos_ids)] = -np.inf
            token = int(np.argmax(masked))
        result.tokens.append(token)
        if keep_logits:
            result.step_logits.append(logits)
        if on_token is not None:
            on_token(token)
        if token in eos_ids or step == max_new_tokens - 1:
            break
        if backend.position >= backend.max_seq_len:
            result.stopped_at_max_seq_len = True
            break
        logits = backend.decode(token)
    result.decode_seconds = time.perf_counter() - start
    return result
