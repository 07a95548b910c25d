"""GLASS in eager PyTorch: dense prefill, selection, sparse decode.

This is the reference every exported artifact is compared with.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import GlassExportError
from .models import FFNLayer, ffn_layers, model_info
from .priors import Priors
from .selection import LocalStats, SelectionConfig, ranks, select_with_ranks


@contextlib.contextmanager
def record_ffn_activations(ffns: list[FFNLayer], callback: Callable[[int, torch.Tensor], None]):
    """Call callback(layer, z) with every FFN's z = act(x Wg^T) * (x Wu^T) ([batch, T, m])."""
    handles = []
    for layer, ffn in enumerate(ffns):

        def hook(_module, inputs, layer=layer):
            callback(layer, inputs[0].detach())

        handles.append(ffn.down_input_module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _kept_neuron_forward(ffn: FFNLayer, idx: torch.Tensor):
    gate, up, down = ffn.gate[idx], ffn.up[idx], ffn.down[:, idx].contiguous()
    act = ffn.act_fn

    def forward(x):
        return F.linear(act(F.linear(x, gate)) * F.linear(x, up), down)

    return forward


@contextlib.contextmanager
def sparse_ffns(ffns: list[FFNLayer], indices: torch.Tensor):
    """Within the block every FFN computes with only its kept neurons indices[layer]."""
    for layer, ffn in enumerate(ffns):
        ffn.module.forward = _kept_neuron_forward(ffn, indices[layer])
    try:
        yield
    finally:
        for ffn in ffns:
            del ffn.module.forward  # back to the class's dense forward


@dataclass
class GenerationResult:
    prompt_ids: list[int]
    tokens: list[int]
    indices: torch.Tensor  # [layers, k]
    local_scores: torch.Tensor | None  # [layers, m]
    step_logits: list[torch.Tensor] = field(default_factory=list)  # logits that chose each token
    prefill_logits: torch.Tensor | None = None  # [T, vocab], kept with keep_logits
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


class GlassModel:
    """A Hugging Face causal LM with GLASS selection applied at the end of prefill."""

    def __init__(self, model, config: SelectionConfig, priors: Priors | None = None, check_priors: bool = True):
        self.model = model
        self.config = config
        self.ffns = ffn_layers(model)
        self.num_layers = len(self.ffns)
        self.m = self.ffns[0].gate.shape[0]
        self.k = config.keep_count(self.m)
        self.global_rank = None  # ranks of the chosen prior, computed once
        if config.prior_name is not None:
            if priors is None:
                raise GlassExportError(
                    f"method {config.method} needs global priors",
                    "run `glass-export calibrate` and pass its output with --priors",
                )
            if check_priors:
                priors.check_matches(model_info(model))
            self.global_rank = ranks(priors.tensor(config.prior_name))

    @property
    def kept_fraction(self) -> float:
        return self.k / self.m

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor):
        """Dense prefill of one prompt [1, T] -> (logits [1, T, vocab], cache, local scores, indices)."""
        if input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise GlassExportError("prefill takes one prompt of shape [1, T]")
        if input_ids.shape[1] == 0:
            raise GlassExportError("the prompt is empty", "pass a prompt with at least one token")
        stats = LocalStats(self.num_layers, self.m) if self.config.needs_local_stats else None
        recorder = (
            record_ffn_activations(self.ffns, stats.add) if stats is not None else contextlib.nullcontext()
        )
        with recorder:
            out = self.model(input_ids=input_ids, use_cache=True)
        local = stats.scores() if stats is not None else None
        indices = select_with_ranks(self.config, local, self.global_rank, self.m, self.num_layers)
        return out.logits, out.cache, local, indices

    def sparse(self, indices: torch.Tensor):
        return contextlib.nullcontext() if self.config.method == "dense" else sparse_ffns(self.ffns, indices)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        eos_ids: set[int] | None = None,
        on_token: Callable[[int], None] | None = None,
        keep_logits: bool = False,
    ) -> GenerationResult:
        """Greedy generation: the first token comes from the dense prefill, the rest from sparse decode."""
        start = time.perf_counter()
        logits, cache, local, indices = self.prefill(torch.tensor([prompt_ids]))
        step_logits = logits[0, -1]
        prefill_seconds = time.perf_counter() - start
        result = GenerationResult(list(prompt_ids), [], indices, local, prefill_seconds=prefill_seconds)
        if keep_logits:
            result.prefill_logits = logits[0]
        eos_ids = eos_ids or set()
        start = time.perf_counter()
        with self.sparse(indices):
            for step in range(max_new_tokens):
                token = int(torch.argmax(step_logits))
                result.tokens.append(token)
                if keep_logits:
                    result.step_logits.append(step_logits.clone())
                if on_token is not None:
                    on_token(token)
                if token in eos_ids or step == max_new_tokens - 1:
                    break
                out = self.model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
                step_logits, cache = out.logits[0, -1], out.cache
        result.decode_seconds = time.perf_counter() - start
        return result


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
