"""`glass-export eval`: generation fidelity of GLASS against dense and the other methods.

Protocol (../shared/GLASS.md): short prompts, greedy generation. For each method
(x density x lambda) the sparse model generates greedily; the dense model then scores that
text in one forward pass over prompt + generation:

- perplexity of the sparse generation under the dense model (lower is better);
- mean KL(p_dense || p_sparse) of the next-token distributions over generated positions,
  both conditioned on the same prefix (the sparse generation so far).

End of turn: each generation stops at the model's EOS / end-of-turn token (the position that
predicts it is scored: ending the answer is part of it), and nothing after it is generated or
scored. Before --min-new-tokens the EOS tokens are never chosen (the next best token is, as
transformers' min_new_tokens does); KL is computed on the unmasked distributions. At most
--max-new-tokens are generated. Methods therefore score different numbers of positions; each run
reports its count and how many prompts ended at EOS. --ignore-eos restores fixed-length generation.

The first generated token comes from the dense prefill in every method, so it carries no
sparsity; both metrics average over the positions decoded sparsely (the 2nd token on), pooled
over prompts. Uncertainty: per-prompt metrics and a paired bootstrap over prompts (bootstrap.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from .bootstrap import LEVEL, RESAMPLES, SEED, draws, interval, resample
from .eager import GlassModel
from .errors import GlassExportError
from .generation import DEFAULT_MIN_NEW_TOKENS, Backend, generate
from .models import ModelInfo, model_info
from .quantization import QuantScheme
from .selection import METHODS, SelectionConfig, check_density, lambda_units

GLASS_METHODS = tuple(name for name, method in METHODS.items() if method.takes_lambda)
TUNED = "tuned"  # --lambdas tuned: each method's lambda from the priors' `glass-export tune` record


@dataclass(frozen=True)
class Protocol:
    """How long each generation runs: to EOS / end of turn (eos_ids; empty: fixed length), after at least
    min_new_tokens (capped at max_new_tokens) and at most max_new_tokens."""

    max_new_tokens: int = 128
    min_new_tokens: int = DEFAULT_MIN_NEW_TOKENS
    eos_ids: frozenset = frozenset()

    @property
    def min_tokens(self) -> int:
        return min(self.min_new_tokens, self.max_new_tokens) if self.eos_ids else 0

    def to_dict(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_tokens,
                "stop_at_eos": bool(self.eos_ids), "eos_token_ids": sorted(self.eos_ids)}


def as_protocol(protocol: "Protocol | int") -> Protocol:
    """A bare max_new_tokens means fixed-length generation (no EOS stop)."""
    return protocol if isinstance(protocol, Protocol) else Protocol(int(protocol), 0)


@dataclass
class PromptScore:
    """One prompt of one run: positions scored, their mean KL and perplexity, and whether it ended at EOS."""

    tokens: int
    kl: float
    perplexity: float
    ended_at_eos: bool

    @classmethod
    def of(cls, nll_sum: float, kl_sum: float, tokens: int, ended: bool) -> "PromptScore":
        return cls(tokens, kl_sum / tokens if tokens else 0.0, math.exp(nll_sum / tokens) if tokens else 1.0, ended)

    @property
    def kl_sum(self) -> float:
        return self.kl * self.tokens

    @property
    def nll_sum(self) -> float:
        return math.log(self.perplexity) * self.tokens


@dataclass
class RunResult:
    method: str
    density: float
    lam: float | None
    perplexity: float
    kl: float
    tokens: int  # sparse-decoded positions scored, over all prompts
    vs_griffin_perplexity: float | None = None  # relative change, e.g. -0.2 = 20% lower
    vs_griffin_kl: float | None = None
    ended_at_eos: int = 0  # prompts whose generation ended at EOS / end of turn
    kl_ci: list | None = None  # bootstrap interval over prompts, [low, high]
    perplexity_ci: list | None = None
    kl_diff_vs_griffin: float | None = None  # KL - griffin's KL at the same density, and its paired interval
    kl_diff_vs_griffin_ci: list | None = None
    per_prompt: list = field(default_factory=list)  # PromptScore of every prompt, in prompt order

    @classmethod
    def of(cls, config: SelectionConfig, scores: list[PromptScore]) -> "RunResult":
        count = sum(s.tokens for s in scores)
        if count == 0:
            raise GlassExportError("no position was decoded sparsely", "raise --max-new-tokens above 1")
        return cls(config.method, config.density if config.sparse_decode else 1.0,
                   config.effective_lambda if config.spec.takes_lambda else None,
                   math.exp(sum(s.nll_sum for s in scores) / count), sum(s.kl_sum for s in scores) / count, count,
                   ended_at_eos=sum(s.ended_at_eos for s in scores), per_prompt=scores)

    @property
    def label(self) -> str:
        if not METHODS[self.method].sparse_decode:
            return self.method
        return f"{self.method} rho={self.density:g}" + ("" if self.lam is None else f" lambda={self.lam:g}")


def plan_runs(methods: list[str], densities: list[float], lambdas: "list[float] | str",
              priors=None) -> list[SelectionConfig]:
    """Every method x density (x lambda for a-glass / i-glass); dense once. lambdas == TUNED: each method's
    lambda at each density from the priors' tune record (Priors.tuned)."""
    for method in methods:
        if method not in METHODS:
            raise GlassExportError(f"unknown method {method!r}", f"choose from: {', '.join(METHODS)}")
    for density in densities:
        check_density(density)
    if lambdas != TUNED:
        for lam in lambdas:
            lambda_units(lam)
    runs = []
    if "dense" in methods:
        runs.append(SelectionConfig("dense"))
    for density in densities:
        for method in methods:
            if not METHODS[method].sparse_decode:
                continue
            if method in GLASS_METHODS:
                runs += [SelectionConfig(method, density, lam) for lam in
                         (lambdas if lambdas != TUNED else [tuned_lambda(priors, method, density)])]
            else:
                runs.append(SelectionConfig(method, density))
    return runs


def tuned_lambda(priors, method: str, density: float) -> float:
    record = priors.tuned(method, density) if priors is not None else None
    if record is None:
        raise GlassExportError(f"--lambdas tuned: the priors carry no tuned lambda for {method}",
                               "run `glass-export tune` on these priors and pass its output, or give numbers")
    return record["lambda"]


@torch.no_grad()
def dense_scores(model, prompt_ids: list[int], generated: list[int]) -> torch.Tensor:
    """Dense log-probabilities [len(generated), vocab] of each generated position given its prefix."""
    ids = torch.tensor([prompt_ids + generated[:-1]])
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 :].float()
    return torch.log_softmax(logits, dim=-1)


def score_generation(dense_logp: torch.Tensor, sparse_logits: list, generated: list[int]) -> tuple[float, float, int]:
    """(sum of NLL, sum of KL, positions) over the sparsely decoded positions 1.."""
    nll = kl = 0.0
    count = 0
    for step in range(1, len(generated)):
        p_dense_log = dense_logp[step]
        sparse = torch.as_tensor(np.asarray(sparse_logits[step]), dtype=torch.float32)
        p_sparse_log = torch.log_softmax(sparse, dim=-1)
        nll -= float(p_dense_log[generated[step]])
        # KL >= 0 holds exactly; in float a near-identical pair can give -1e-9: left as computed, so a
        # sign error in the formula would show
        kl += float((p_dense_log.exp() * (p_dense_log - p_sparse_log)).sum())
        count += 1
    return nll, kl, count


BackendFor = Callable[[SelectionConfig], Backend]


def score_prompt(model, backend: Backend, prompt: list[int], protocol: "Protocol | int"):
    """(generation, nll sum, kl sum, positions) of one prompt generated by backend, scored by `model`."""
    protocol = as_protocol(protocol)
    generation = generate(backend, prompt, protocol.max_new_tokens, set(protocol.eos_ids), keep_logits=True,
                          min_new_tokens=protocol.min_tokens)
    return (generation, *score_generation(dense_scores(model, prompt, generation.tokens), generation.step_logits,
                                          generation.tokens))


def evaluate(model, prompts_ids: list[list[int]], runs: list[SelectionConfig], protocol: "Protocol | int",
             backend_for: BackendFor, progress: Callable[[], None] | None = None,
             kept_sets: list | None = None) -> list[RunResult]:
    """Score every run on every prompt: backend_for(config) generates (eager GLASS or an artifact), the
    fp32 dense `model` scores. protocol: a Protocol, or max_new_tokens for fixed-length generation.
    kept_sets, when given, gets (prompt, kept set, kl sum, positions) of every prompt of the first run."""
    protocol = as_protocol(protocol)
    results = []
    for config in runs:
        backend = backend_for(config)
        scores = []
        for prompt in prompts_ids:
            generation, nll, kl, count = score_prompt(model, backend, prompt, protocol)
            scores.append(PromptScore.of(nll, kl, count, bool(generation.tokens) and generation.tokens[-1] in protocol.eos_ids))
            if kept_sets is not None and not results:
                kept_sets.append((prompt, generation.indices, kl, count))
        results.append(RunResult.of(config, scores))
        if progress is not None:
            progress()
    add_griffin_comparison(results)
    add_intervals(results)
    return results


def add_intervals(results: list[RunResult], seed: int = SEED) -> None:
    """Bootstrap intervals of each run's KL and perplexity, and of its KL difference to griffin at the same
    density (paired: the same draws of prompts for every run)."""
    if not results:
        return
    idx = draws(len(results[0].per_prompt), seed=seed)
    griffin = {r.density: r for r in results if r.method == "griffin"}
    for r in results:
        s = resample(r.per_prompt, idx)
        r.kl_ci, r.perplexity_ci = interval(s.kl), interval(s.perplexity)
        base = griffin.get(r.density)
        if base is not None and r is not base and METHODS[r.method].sparse_decode:
            diff = paired_difference(r, base, seed)
            r.kl_diff_vs_griffin, r.kl_diff_vs_griffin_ci = diff["kl_difference"], diff["ci"]


def kl_differences(results: list[RunResult], seed: int = SEED) -> list[dict]:
    """Every pair of sparse runs at the same density: paired_difference(a, b) with the runs' labels."""
    sparse = [r for r in results if METHODS[r.method].sparse_decode]
    return [{"a": a.label, "b": b.label, **paired_difference(a, b, seed)}
            for i, a in enumerate(sparse) for b in sparse[i + 1:] if a.density == b.density]


def paired_difference(a: RunResult, b: RunResult, seed: int = SEED) -> dict:
    """KL(a) - KL(b) on the same prompts, its paired bootstrap interval, and the share of resamples in which a
    has the lower KL."""
    if len(a.per_prompt) != len(b.per_prompt):
        raise GlassExportError("internal: runs compared on different prompts")
    idx = draws(len(a.per_prompt), seed=seed)
    diff = resample(a.per_prompt, idx).kl - resample(b.per_prompt, idx).kl
    return {"kl_difference": a.kl - b.kl, "ci": interval(diff), "share_a_lower": float((diff < 0).mean())}


def bootstrap_meta(seed: int = SEED) -> dict:
    return {"unit": "prompt", "resamples": RESAMPLES, "level": LEVEL, "seed": seed, "paired": True}


def run_evaluation(model_dir, out, priors_path=None, prompts_path=None, methods=tuple(METHODS),
                   densities=(0.25, 0.5, 0.75), lambdas=(0.25, 0.5, 0.75), max_new_tokens: int = 128,
                   chat: bool = False, artifact=None, quant: QuantScheme = QuantScheme(), force: bool = False,
                   progress=None, split: str | None = None, min_new_tokens: int = DEFAULT_MIN_NEW_TOKENS,
                   stop_at_eos: bool = True) -> tuple[list[RunResult], str]:
    """`glass-export eval`: check inputs and --out, run, write results.json, results.md and the plots.

    Prompts: prompts_path (None: the shipped instructions) restricted to `split` (prompts.read_prompt_set).
    With `artifact` the artifact's own method is evaluated as shipped (its runtime generates);
    otherwise every method x density (x lambda) runs in eager PyTorch, quantised by `quant`."""
    import json
    from pathlib import Path

    from .outputs import OutputPlan
    from .prompts import describe_prompt_set, encode_prompt, read_prompt_set

    prompt_texts = read_prompt_set(prompts_path, split)
    inputs = [Path(p) for p in (model_dir, priors_path, prompts_path, artifact) if p is not None]
    plan = OutputPlan(Path(out), kind="eval", force=force, inputs=inputs)
    tokenizer, model, info, loaded = load_scorer(model_dir, priors_path)
    if artifact is not None:
        from .runtime import open_artifact

        shipped = open_artifact(artifact)
        if shipped.manifest.model.fingerprint != info.fingerprint:
            raise GlassExportError(f"artifact {artifact} was exported from another model", "pass its own --model")
        runs, backend_for = [shipped.manifest.selection], lambda config: shipped
        quant = shipped.manifest.quant
    else:
        runs = plan_runs(methods, densities, lambdas, loaded)
        if loaded is None and any(r.prior_name for r in runs):
            raise GlassExportError("the methods include ones that need global priors",
                                   "pass --priors, or drop them from --methods")
        backend_for = eager_backends(model, loaded, quant, info)
    protocol = make_protocol(model, tokenizer, max_new_tokens, min_new_tokens, stop_at_eos)
    prompt_ids = [encode_prompt(tokenizer, p, chat) for p in prompt_texts]
    kept_sets = [] if artifact is not None else None
    results = evaluate(model, prompt_ids, runs, protocol, backend_for, progress, kept_sets)
    meta = {"model": info.to_dict(), "prompts": len(prompt_texts),
            "prompt_set": describe_prompt_set(prompts_path, split, len(prompt_texts)), **protocol.to_dict(),
            "chat_template": chat, "artifact": None if artifact is None else str(artifact),
            "quantization": quant.to_dict(),
            "priors": None if priors_path is None else str(priors_path), "bootstrap": bootstrap_meta(),
            "kl_differences": kl_differences(results)}
    table = markdown_table(results)
    if artifact is not None:
        swaps = boundary_swaps(model, GlassModel.for_artifact(model, shipped.manifest, artifact, info), kept_sets,
                               protocol)
        meta["boundary_swaps"] = swaps
        table += describe_swaps(swaps)
    with plan.directory() as tmp:
        (tmp / "results.json").write_text(json.dumps(to_json(results, meta), indent=2) + "\n")
        (tmp / "results.md").write_text(table)
        plot(results, tmp)
    return results, table


def load_scorer(model_dir, priors_path=None):
    """(tokenizer, fp32 dense model, its ModelInfo, priors or None); priors are checked against the model."""
    from .models import load_model, load_tokenizer
    from .priors import load_priors

    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    info = model_info(model)
    priors = load_priors(priors_path) if priors_path is not None else None
    if priors is not None:
        priors.check_matches(info)
    return tokenizer, model, info, priors


def make_protocol(model, tokenizer, max_new_tokens: int, min_new_tokens: int = DEFAULT_MIN_NEW_TOKENS,
                  stop_at_eos: bool = True) -> Protocol:
    """The eval protocol for this model: its EOS / end-of-turn ids (eager.eos_token_ids) unless stop_at_eos is off."""
    from .eager import eos_token_ids

    eos = frozenset(eos_token_ids(model, tokenizer)) if stop_at_eos else frozenset()
    if stop_at_eos and not eos:
        raise GlassExportError("the model and tokenizer name no EOS token, so generation cannot stop at it",
                               "pass --ignore-eos to generate a fixed --max-new-tokens")
    return Protocol(max_new_tokens, min_new_tokens, eos)


def boundary_swaps(model, eager: GlassModel, kept_sets: list, protocol: "Protocol | int") -> dict:
    """For an artifact's run: on how many prompts its kept set differs from eager PyTorch's (neurons that
    float reduction order swapped at the top-k boundary), and what that did to KL: those prompts'
    mean KL as the artifact generated them against eager PyTorch generating them with its own set."""
    swapped = []
    for prompt, kept, kl, count in kept_sets:
        if not np.array_equal(eager.prefill(prompt).indices, kept):
            _, _, eager_kl, eager_count = score_prompt(model, eager, prompt, protocol)
            swapped.append((kl, count, eager_kl, eager_count))
    result = {"prompts": len(kept_sets), "prompts_with_swaps": len(swapped)}
    if swapped:
        artifact_kl = sum(s[0] for s in swapped) / sum(s[1] for s in swapped)
        eager_kl = sum(s[2] for s in swapped) / sum(s[3] for s in swapped)
        result.update(kl_with_artifact_set=artifact_kl, kl_with_eager_set=eager_kl, kl_difference=artifact_kl - eager_kl)
    return result


def describe_swaps(swaps: dict) -> str:
    text = (f"\nKept sets: {swaps['prompts_with_swaps']} of {swaps['prompts']} prompts differ from eager PyTorch's "
            "(boundary swaps)")
    if swaps["prompts_with_swaps"]:
        text += (f"; their KL {swaps['kl_with_artifact_set']:.4g} with the artifact's sets, "
                 f"{swaps['kl_with_eager_set']:.4g} with eager's")
    return text + ".\n"


def eager_backends(model, priors, quant: QuantScheme, info: ModelInfo) -> BackendFor:
    """One eager GlassModel per run config; each quantised model copy (sparse / dense FFN layout) is made once."""
    from .quantization import quantize_model

    references: dict[bool, torch.nn.Module] = {}
    cache: dict[SelectionConfig, GlassModel] = {}

    def backend_for(config: SelectionConfig) -> GlassModel:
        if config not in cache:
            sparse = config.sparse_decode
            if sparse not in references:
                references[sparse] = quantize_model(model, quant, "onnx", sparse)
            cache[config] = GlassModel(references[sparse], config, priors, info=info)
        return cache[config]

    return backend_for


def add_griffin_comparison(results: list[RunResult]) -> None:
    """Relative change of each run's metrics against griffin at the same density."""
    griffin = {r.density: r for r in results if r.method == "griffin"}
    for r in results:
        base = griffin.get(r.density)
        if base is None or r.method == "griffin" or not METHODS[r.method].sparse_decode:
            continue
        r.vs_griffin_perplexity = r.perplexity / base.perplexity - 1.0
        r.vs_griffin_kl = (r.kl / base.kl - 1.0) if base.kl > 0 else None


def to_json(results: list[RunResult], meta: dict) -> dict:
    return {**meta, "runs": [asdict(r) for r in results]}


def markdown_table(results: list[RunResult]) -> str:
    """One row a run; intervals are the bootstrap's (prompts resampled, see bootstrap.py)."""
    lines = [
        "| method | density | lambda | scored tokens | ended at EOS | perplexity (dense scorer) [95% CI] | "
        "KL(dense ‖ sparse) [95% CI] | vs griffin: ppl | vs griffin: KL | KL − griffin's [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def rel(v):
        return "" if v is None else f"{v:+.1%}"

    def ci(v):
        return "" if v is None else f" [{v[0]:.3g}, {v[1]:.3g}]"

    for r in results:
        lam = "" if r.lam is None else f"{r.lam:g}"
        diff = "" if r.kl_diff_vs_griffin is None else f"{r.kl_diff_vs_griffin:+.3g}{ci(r.kl_diff_vs_griffin_ci)}"
        lines.append(f"| {r.method} | {r.density:g} | {lam} | {r.tokens} | {r.ended_at_eos}/{len(r.per_prompt)} | "
                     f"{r.perplexity:.4g}{ci(r.perplexity_ci)} | {r.kl:.4g}{ci(r.kl_ci)} | "
                     f"{rel(r.vs_griffin_perplexity)} | {rel(r.vs_griffin_kl)} | {diff} |")
    return "\n".join(lines) + "\n"


def plot(results: list[RunResult], out_dir) -> list[str]:
    """metric vs density per method, and metric vs lambda for a-glass / i-glass; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for metric, label in (("perplexity", "perplexity of sparse generation (dense scorer)"), ("kl", "KL(dense || sparse)")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        series: dict[str, list[tuple[float, float]]] = {}
        for r in results:
            if not METHODS[r.method].sparse_decode:
                continue
            name = r.method if r.lam is None else f"{r.method} λ={r.lam:g}"
            series.setdefault(name, []).append((r.density, getattr(r, metric)))
        for name, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        dense = [r for r in results if not METHODS[r.method].sparse_decode]
        if dense and metric == "perplexity":
            ax.axhline(dense[0].perplexity, color="black", linestyle="--", linewidth=1, label="dense")
        files.append(_save(fig, ax, "density ρ (fraction of FFN neurons kept)", label, out_dir / f"{metric}_vs_density.png"))
        glass = [r for r in results if r.lam is not None]
        if len({r.lam for r in glass}) > 1:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for method in GLASS_METHODS:
                # lambda = 0 is the static mask of the same prior and lambda = 1 is griffin: the curve's ends.
                static = next(m.name for m in METHODS.values() if m.fixed_lambda == 0.0 and m.prior == METHODS[method].prior)
                for density in sorted({r.density for r in glass}):
                    pts = sorted((r.lam, getattr(r, metric)) for r in glass if r.method == method and r.density == density)
                    ends = [(0.0 if r.method == static else 1.0, getattr(r, metric)) for r in results
                            if r.method in (static, "griffin") and r.density == density]
                    pts = sorted(pts + ends)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{method} ρ={density:g}")
            files.append(_save(fig, ax, "λ (weight of the prompt's ranking; 0 = static prior, 1 = griffin)", label,
                               out_dir / f"{metric}_vs_lambda.png"))
    return files


def _save(fig, ax, xlabel: str, ylabel: str, path) -> str:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
