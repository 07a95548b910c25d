"""GLASS neuron selection: local scores, global priors, rank fusion, top-k.

Everything here follows ../shared/GLASS.md and works on whole stacks of
layers at once (`[layers, m]` tensors) so that the exported prefill graph can
reuse the same functions.

Fusion uses integer arithmetic so that every runtime (eager PyTorch, ONNX
Runtime, ExecuTorch) keeps exactly the same neurons: lambda is a multiple of
1/LAMBDA_SCALE and the fused score

    f(i) = lambda * r_local(i) + (1 - lambda) * r_global(i)

is computed as the integer LAMBDA_SCALE * f(i).  Ties in f are broken by the
local rank, which is itself a permutation, so the order is total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
# the local statistic's, the ranking's and the rank fusion's one definitions (select_kept's too)
from glass_ops.torch_ops import fused_rank_keys, normalised_square_sum, ranks

from .errors import GlassExportError

LAMBDA_SCALE = 1000
# Without a tuned lambda in the priors: on SmolLM2's tune half, 0.1 had the lowest KL summed over a-glass and
# i-glass at rho 0.5 and 0.25 (docs/quality_protocol.md); `glass-export tune` chooses one per model.
DEFAULT_LAMBDA = 0.1
TUNE_LAMBDAS = (0.1, 0.25, 0.5, 0.75, 0.9)  # what `glass-export tune` sweeps by default


@dataclass(frozen=True)
class Method:
    """One selection method: every rule about it lives here."""

    name: str
    prior: str | None  # the global prior whose ranks it uses ("activation" | "impact")
    fixed_lambda: float | None  # griffin 1, static 0; None: the user's lambda or none at all
    takes_lambda: bool  # a-glass / i-glass: --lambda applies
    sparse_decode: bool  # False only for dense
    summary: str

    @property
    def needs_priors(self) -> bool:
        return self.prior is not None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dense", None, None, False, False, "every neuron (the dense twin)"),
    Method("griffin", None, 1.0, False, True, "prompt only (lambda 1)"),
    Method("static-a", "activation", 0.0, False, True, "activation prior only (lambda 0, prompt-independent)"),
    Method("static-i", "impact", 0.0, False, True, "impact prior only (lambda 0, prompt-independent)"),
    Method("a-glass", "activation", None, True, True, "A-GLASS: prompt + activation prior, fused by rank"),
    Method("i-glass", "impact", None, True, True, "I-GLASS: prompt + impact prior, fused by rank"),
    Method("random", None, None, False, True, "a seeded random k-subset per layer (the floor)"),
)}


def keep_count(density: float, intermediate_size: int) -> int:
    """k = round(density * m), rounding halves up (Python's round() rounds them to even)."""
    check_density(density)
    k = math.floor(density * intermediate_size + 0.5)
    if k < 1:
        raise GlassExportError(
            f"density {density} keeps no neuron of {intermediate_size}",
            f"use a density of at least {0.5 / intermediate_size:.2g}",
        )
    return min(k, intermediate_size)


def check_density(density: float) -> None:
    if not (0.0 < density <= 1.0):
        raise GlassExportError(
            f"density must be in (0, 1], got {density}", "pass e.g. --density 0.5 to keep half the FFN neurons"
        )


def lambda_units(lam: float) -> int:
    """lambda as an integer number of 1/LAMBDA_SCALE steps; refuses values off that grid."""
    if not (0.0 <= lam <= 1.0):
        raise GlassExportError(f"lambda must be in [0, 1], got {lam}", "1 = prompt only (GRIFFIN), 0 = prior only")
    units = round(lam * LAMBDA_SCALE)
    if abs(units - lam * LAMBDA_SCALE) > 1e-6:
        raise GlassExportError(
            f"lambda must be a multiple of {1 / LAMBDA_SCALE}, got {lam}",
            f"round it, e.g. --lambda {units / LAMBDA_SCALE}; ranks are fused in exact integer arithmetic",
        )
    return units


class LocalStats:
    """Running GRIFFIN statistic: per layer, sum over tokens of (z_t / ||z_t||)^2.

    The local score is the square root of this sum, i.e. the column norm of
    the row-normalised activation matrix Z.  Keeping the squared sum lets
    prompts be fed in chunks.
    """

    def __init__(self, num_layers: int, intermediate_size: int):
        self.sq_sum = torch.zeros(num_layers, intermediate_size, dtype=torch.float64)

    def add(self, layer: int, z: torch.Tensor) -> None:
        self.sq_sum[layer] += normalised_square_sum(z.reshape(-1, z.shape[-1]))

    def scores(self) -> torch.Tensor:
        return self.sq_sum.sqrt().float()


def local_scores(z: torch.Tensor) -> torch.Tensor:
    """Local score of every neuron from one layer's prompt activations z [T, m]."""
    return normalised_square_sum(z).sqrt().float()


def ranks_by_topk(scores: torch.Tensor) -> torch.Tensor:
    """ranks() written with a full top-k, for exported graphs (ONNX has no stable sort).

    Top-k implementations order equal values differently (ONNX Runtime by index, ExecuTorch and
    PyTorch not), so the ranking runs on tie_free_keys(scores), which are distinct and keep ranks()'
    order exactly: the same ranks on every runtime."""
    m = scores.shape[-1]
    order = torch.topk(tie_free_keys(scores), m, dim=-1, largest=True, sorted=True).indices
    positions = torch.arange(m, dtype=torch.int64).expand_as(order)
    return torch.zeros_like(order).scatter_(-1, order, positions)


def tie_free_keys(scores: torch.Tensor) -> torch.Tensor:
    """float64 keys (s + 2^-126) (1 + (m - 1 - i) 2^-40) of non-negative float32 scores s [.., m].

    Distinct float32 scores are at least 2^-24 apart relatively and the index term moves a key by less
    than m 2^-40 (m < 2^16), so the order of the scores is kept; equal scores (zeros included, by the
    2^-126) get keys ordered by the lower index, and IEEE float64 arithmetic computes them identically
    everywhere."""
    m = scores.shape[-1]
    index_terms = 1.0 + torch.arange(m - 1, -1, -1, dtype=torch.float64) * 2.0**-40
    return (scores.double() + 2.0**-126) * index_terms


def fused_keys(local_rank: torch.Tensor, global_rank: torch.Tensor | None, lam_units: int) -> torch.Tensor:
    """The integer each neuron is ranked by, smallest kept first: the fused score, then the local rank
    (a permutation), so the keys of a layer are distinct."""
    if global_rank is None and lam_units != LAMBDA_SCALE:
        raise GlassExportError("a global prior is needed when lambda < 1", "pass --priors from glass-export calibrate")
    return fused_rank_keys(local_rank, global_rank, lam_units, LAMBDA_SCALE - lam_units)


def fused_positions(config: "SelectionConfig", local: torch.Tensor, global_rank: torch.Tensor | None) -> torch.Tensor:
    """Each neuron's place in the method's order for these local scores [layers, m] (0 = kept first; the
    kept set is the places below k), for methods that read the prompt."""
    return ranks(-fused_keys(ranks(local), global_rank, lambda_units(config.effective_lambda)))


def fuse_and_select(local_rank: torch.Tensor, global_rank: torch.Tensor | None, lam_units: int, k: int) -> torch.Tensor:
    """Keep the k neurons with the smallest fused rank score, per layer.

    local_rank, global_rank: int64 `[layers, m]` rank tensors (global may be
    None when lambda is 1).  Returns int64 `[layers, k]` neuron indices in
    ascending order (ascending indices keep the decode weight reads in
    memory order).
    """
    key = fused_keys(local_rank, global_rank, lam_units)
    kept = torch.topk(key, k, dim=-1, largest=False, sorted=False).indices
    # Ascending neuron order: -topk(-x) sorts the (distinct) indices without a sort op.
    return -torch.topk(-kept, k, dim=-1, largest=True, sorted=True).values


def random_selection(num_layers: int, m: int, k: int, seed: int) -> torch.Tensor:
    """A seeded random k-subset per layer (the floor every method must beat)."""
    rows = []
    for layer in range(num_layers):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + layer)
        rows.append(torch.sort(torch.randperm(m, generator=gen)[:k]).values)
    return torch.stack(rows)


@dataclass(frozen=True)
class SelectionConfig:
    """What to keep: the method, the density and (for a-glass / i-glass) lambda."""

    method: str
    density: float = 0.5
    lam: float | None = None
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise GlassExportError(
                f"unknown method {self.method!r}", f"choose one of: {', '.join(METHODS)}"
            )
        check_density(self.density)
        if self.lam is not None:
            if not self.spec.takes_lambda:
                takers = " and ".join(m.name for m in METHODS.values() if m.takes_lambda)
                raise GlassExportError(
                    f"lambda does not apply to method {self.method!r}",
                    f"only {takers} take --lambda; drop it or pick one of those",
                )
            lambda_units(self.lam)

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def prior_name(self) -> str | None:
        return self.spec.prior

    @property
    def sparse_decode(self) -> bool:
        return self.spec.sparse_decode

    @property
    def effective_lambda(self) -> float | None:
        if self.spec.fixed_lambda is not None:
            return self.spec.fixed_lambda
        if self.spec.takes_lambda:
            return DEFAULT_LAMBDA if self.lam is None else self.lam
        return None

    @property
    def needs_local_stats(self) -> bool:
        lam = self.effective_lambda
        return lam is not None and lam > 0

    def keep_count(self, intermediate_size: int) -> int:
        if not self.sparse_decode:
            return intermediate_size
        return keep_count(self.density, intermediate_size)

    def describe(self) -> str:
        if not self.sparse_decode:
            return "dense"
        text = f"{self.method} density={self.density:g}"
        if self.spec.takes_lambda:
            text += f" lambda={self.effective_lambda:g}"
        return text

    def to_dict(self, intermediate_size: int) -> dict:
        """The manifest's record: the choice and what it implies for this model."""
        return {"method": self.method, "density": self.density if self.sparse_decode else 1.0,
                "lambda": self.effective_lambda, "seed": self.seed, "k": self.keep_count(intermediate_size),
                "m": intermediate_size, "sparse_decode": self.sparse_decode}

    @classmethod
    def from_dict(cls, data: dict) -> "SelectionConfig":
        method = METHODS.get(data.get("method"))
        lam = data.get("lambda") if method is not None and method.takes_lambda else None
        return cls(data.get("method"), data.get("density", 1.0), lam, data.get("seed", 0))


def select(config: SelectionConfig, local: torch.Tensor | None, prior: torch.Tensor | None, m: int, num_layers: int) -> torch.Tensor:
    """Indices `[layers, k]` for one prompt.

    local: local scores `[layers, m]` from the prefill (None when unused);
    prior: the chosen global prior `[layers, m]` (None when unused).
    """
    return select_with_ranks(config, local, None if prior is None else ranks(prior), m, num_layers)


def select_with_ranks(config: SelectionConfig, local: torch.Tensor | None, global_rank: torch.Tensor | None, m: int,
                      num_layers: int, rank_fn=ranks, fused_select=None) -> torch.Tensor:
    """select() given the prior's ranks, computed once per model by the caller.

    rank_fn ranks the local scores: ranks() in eager PyTorch, ranks_by_topk() in exported graphs.
    fused_select(local, global_rank, lam_units, k), if given, replaces fuse_and_select(rank_fn(local), ...)
    for the methods that read the prompt (ExecuTorch's graphs: one glass::select_kept call).
    """
    k = config.keep_count(m)
    if not config.sparse_decode:
        return torch.arange(m, dtype=torch.int64).expand(num_layers, m).clone()
    if config.method == "random":
        return random_selection(num_layers, m, k, config.seed)
    lam = lambda_units(config.effective_lambda)
    if config.prior_name is not None and global_rank is None:
        raise GlassExportError(
            f"method {config.method} needs global priors",
            "run `glass-export calibrate` and pass its output with --priors",
        )
    if lam > 0 and local is None:
        raise GlassExportError("internal: local scores missing for a prompt-dependent method")
    if lam > 0 and fused_select is not None:
        return fused_select(local, global_rank, lam, k)
    # With lambda = 0 the global ranks alone are a total order, so the local
    # ranks are not needed and the mask does not depend on the prompt.
    local_rank = rank_fn(local) if lam > 0 else torch.zeros(num_layers, m, dtype=torch.int64)
    return fuse_and_select(local_rank, global_rank, lam, k)
