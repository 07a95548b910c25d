"""GLASS in eager PyTorch: dense prefill, selection, sparse decode.

This is the reference every exported artifact is compared with. With a quantisation scheme it runs
the scheme's eager form (quantization.quantize_model): the artifact's dequantised weights and
int8-quantised activations, so kept sets and logits are comparable like with like.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from glass_ops.torch_ops import centred_down_groups, down_int8_from_groups

from .errors import GlassExportError
from .generation import Backend, PrefillResult
from .models import FFNLayer, ModelInfo, ffn_layers, model_info
from .priors import Priors
from .quantization import QuantScheme, fake_quantize_activations, quantize_model
from .selection import LocalStats, SelectionConfig, fused_positions, ranks, select_with_ranks


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
    """The FFN over the kept neurons idx. Quantised with int8 activations, the down projection is the
    decode kernels' integer one (glass_ops.torch_ops.decode_down_int8) over the artifact's own codes."""
    gate, up, down = ffn.gate[idx], ffn.up[idx], ffn.down[:, idx].contiguous()
    act = ffn.act_fn
    group = ffn.input_quant_group
    rows = getattr(ffn.down_input_module, "rows", None)  # quantization.QuantizedLinear: W_down's columns
    if group is not None and rows is not None:
        codes, scales = torch.from_numpy(rows.blocked_codes())[idx], torch.from_numpy(rows.scales)[idx]
        centred = centred_down_groups(codes, rows.bits, rows.group_size)

        def project(h):
            return down_int8_from_groups(h, centred, scales)
    else:
        def project(h):
            return F.linear(h, down)

    def forward(x):
        if group is not None:
            x = fake_quantize_activations(x, group)
        return project(act(F.linear(x, gate)) * F.linear(x, up))

    return forward


@contextlib.contextmanager
def sparse_ffns(ffns: list[FFNLayer], forwards: list):
    """Within the block every FFN computes with only its kept neurons (forwards from _kept_neuron_forward)."""
    for ffn, forward in zip(ffns, forwards):
        ffn.module.forward = forward
    try:
        yield
    finally:
        for ffn in ffns:
            del ffn.module.forward  # back to the class's dense forward


class GlassModel(Backend):
    """A Hugging Face causal LM with GLASS selection applied at the end of prefill."""

    description = "eager PyTorch"

    def __init__(self, model, config: SelectionConfig, priors: Priors | None = None,
                 quant: QuantScheme = QuantScheme(), info: ModelInfo | None = None, target: str = "onnx"):
        """info: the fp32 model's ModelInfo, when the caller has it (fingerprinting reads every weight).
        target: whose quantised operators the reference reproduces (quantization.quantize_model)."""
        super().__init__()
        self.config = config
        self.quant = quant
        self.model = quantize_model(model, quant, target, config.sparse_decode)
        self.ffns = ffn_layers(self.model)
        self.num_layers = len(self.ffns)
        self.m = self.ffns[0].gate.shape[0]
        self.k = config.keep_count(self.m)
        self.max_seq_len = int(getattr(model.config, "max_position_embeddings", None) or 1 << 30)
        self.global_rank = None  # ranks of the chosen prior, computed once
        if config.prior_name is not None:
            if priors is None:
                raise GlassExportError(
                    f"method {config.method} needs global priors",
                    "run `glass-export calibrate` and pass its output with --priors",
                )
            priors.check_matches(info or model_info(model))
            self.global_rank = ranks(priors.tensor(config.prior_name))
        self.cache = None
        self._forwards_for: np.ndarray | None = None
        self._forwards: list = []

    @classmethod
    def for_artifact(cls, model, manifest, directory, info: ModelInfo | None = None) -> "GlassModel":
        """The eager reference of an exported artifact: its selection, priors, weight scheme and target."""
        from pathlib import Path

        from .priors import load_priors

        priors = load_priors(Path(directory) / manifest.priors["file"]) if manifest.priors else None
        return cls(model, manifest.selection, priors, manifest.quant, info=info, target=manifest.target)

    @property
    def kept_fraction(self) -> float:
        return self.k / self.m

    @torch.no_grad()
    def prefill_tensors(self, input_ids: torch.Tensor):
        """Dense prefill of one prompt [1, T] -> (logits [1, T, vocab], cache, local scores, indices)."""
        if input_ids.ndim != 2 or input_ids.shape[0] != 1:
            raise GlassExportError("prefill takes one prompt of shape [1, T]")
        if input_ids.shape[1] == 0:
            raise GlassExportError("the prompt is empty", "pass a prompt with at least one token")
        stats = LocalStats(self.num_layers, self.m) if self.config.needs_local_stats else None
        recorder = record_ffn_activations(self.ffns, stats.add) if stats is not None else contextlib.nullcontext()
        with recorder:
            out = self.model(input_ids=input_ids, use_cache=True)
        local = stats.scores() if stats is not None else torch.zeros(self.num_layers, self.m)
        return out.logits, out.cache, local, self.select(local)

    def select(self, local: torch.Tensor) -> torch.Tensor:
        """The kept set [layers, k] the method gives for these local scores [layers, m]."""
        return select_with_ranks(self.config, local if self.config.needs_local_stats else None, self.global_rank,
                                 self.m, self.num_layers)

    def fused_positions(self, local: torch.Tensor) -> np.ndarray | None:
        """Each neuron's place in the method's order for these local scores (None: the method ignores them)."""
        if not self.config.needs_local_stats:
            return None
        return fused_positions(self.config, local, self.global_rank).numpy()

    def _prefill(self, ids: list[int]) -> PrefillResult:
        logits, self.cache, local, indices = self.prefill_tensors(torch.tensor([ids]))
        return PrefillResult(logits[0].float().numpy(), indices.numpy(), local.numpy())

    def sparse(self, indices: torch.Tensor | np.ndarray):
        """Within the block the FFNs use only the kept neurons `indices` (dense method: a no-op)."""
        if not self.config.sparse_decode:
            return contextlib.nullcontext()
        indices = np.asarray(indices)
        if self._forwards_for is None or not np.array_equal(self._forwards_for, indices):
            kept = torch.as_tensor(indices, dtype=torch.int64)
            self._forwards = [_kept_neuron_forward(ffn, kept[layer]) for layer, ffn in enumerate(self.ffns)]
            self._forwards_for = indices.copy()
        return sparse_ffns(self.ffns, self._forwards)

    @torch.no_grad()
    def _decode(self, token: int, position: int, indices: np.ndarray) -> np.ndarray:
        with self.sparse(indices):
            out = self.model(input_ids=torch.tensor([[token]]), cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[0, -1].float().numpy()


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
