"""`glass-export eval`: generation fidelity of GLASS against dense and the other methods.

Protocol (../shared/GLASS.md): short prompts, long greedy generation. For each method
(x density x lambda) the sparse model generates greedily; the dense model then scores that
text in one forward pass over prompt + generation:

- perplexity of the sparse generation under the dense model (lower is better);
- mean KL(p_dense || p_sparse) of the next-token distributions over generated positions,
  both conditioned on the same prefix (the sparse generation so far).

The first generated token comes from the dense prefill in every method, so it carries no
sparsity; both metrics average over the positions decoded sparsely (the 2nd token on).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from .eager import GlassModel
from .errors import GlassExportError
from .models import model_info
from .selection import METHODS, SelectionConfig, check_density, lambda_units

GLASS_METHODS = ("a-glass", "i-glass")


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


def plan_runs(methods: list[str], densities: list[float], lambdas: list[float]) -> list[SelectionConfig]:
    """Every method x density (x lambda for a-glass / i-glass); dense once."""
    for method in methods:
        if method not in METHODS:
            raise GlassExportError(f"unknown method {method!r}", f"choose from: {', '.join(METHODS)}")
    for density in densities:
        check_density(density)
    for lam in lambdas:
        lambda_units(lam)
    runs = []
    if "dense" in methods:
        runs.append(SelectionConfig("dense"))
    for density in densities:
        for method in methods:
            if method == "dense":
                continue
            if method in GLASS_METHODS:
                runs += [SelectionConfig(method, density, lam) for lam in lambdas]
            else:
                runs.append(SelectionConfig(method, density))
    return runs


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
        kl += float((p_dense_log.exp() * (p_dense_log - p_sparse_log)).sum().clamp_min(0.0))
        count += 1
    return nll, kl, count


GenerateFn = Callable[[SelectionConfig, list[int]], tuple[list[int], list]]


def evaluate(model, priors, prompts_ids: list[list[int]], runs: list[SelectionConfig], max_new_tokens: int,
             generate_fn: GenerateFn | None = None, progress: Callable[[], None] | None = None) -> list[RunResult]:
    """Score every run on every prompt. generate_fn(config, prompt) -> (tokens, step logits) overrides the
    eager sparse model (used to evaluate an exported artifact)."""

    if priors is not None:
        priors.check_matches(model_info(model))  # once: fingerprinting reads every weight
    glass_models: dict[SelectionConfig, GlassModel] = {}

    def eager_generate(config, prompt):
        if config not in glass_models:
            glass_models[config] = GlassModel(model, config, priors, check_priors=False)
        result = glass_models[config].generate(prompt, max_new_tokens, keep_logits=True)
        return result.tokens, result.step_logits

    generate_fn = generate_fn or eager_generate
    results = []
    for config in runs:
        nll = kl = 0.0
        count = 0
        for prompt in prompts_ids:
            tokens, step_logits = generate_fn(config, prompt)
            run_nll, run_kl, run_count = score_generation(dense_scores(model, prompt, tokens), step_logits, tokens)
            nll, kl, count = nll + run_nll, kl + run_kl, count + run_count
        if count == 0:
            raise GlassExportError("no position was decoded sparsely", "raise --max-new-tokens above 1")
        results.append(RunResult(config.method, config.density if config.method != "dense" else 1.0,
                                 config.effective_lambda if config.method in GLASS_METHODS else None,
                                 math.exp(nll / count), kl / count, count))
        if progress is not None:
            progress()
    add_griffin_comparison(results)
    return results


def add_griffin_comparison(results: list[RunResult]) -> None:
    """Relative change of each run's metrics against griffin at the same density."""
    griffin = {r.density: r for r in results if r.method == "griffin"}
    for r in results:
        base = griffin.get(r.density)
        if base is None or r.method in ("griffin", "dense"):
            continue
        r.vs_griffin_perplexity = r.perplexity / base.perplexity - 1.0
        r.vs_griffin_kl = (r.kl / base.kl - 1.0) if base.kl > 0 else None


def to_json(results: list[RunResult], meta: dict) -> dict:
    return {**meta, "runs": [asdict(r) for r in results]}


def markdown_table(results: list[RunResult]) -> str:
    lines = [
        "| method | density | lambda | perplexity (dense scorer) | KL(dense ‖ sparse) | vs griffin: ppl | vs griffin: KL |",
        "|---|---|---|---|---|---|---|",
    ]

    def rel(v):
        return "" if v is None else f"{v:+.1%}"

    for r in results:
        lam = "" if r.lam is None else f"{r.lam:g}"
        lines.append(f"| {r.method} | {r.density:g} | {lam} | {r.perplexity:.4g} | {r.kl:.4g} | "
                     f"{rel(r.vs_griffin_perplexity)} | {rel(r.vs_griffin_kl)} |")
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
            if r.method == "dense":
                continue
            name = r.method if r.lam is None else f"{r.method} λ={r.lam:g}"
            series.setdefault(name, []).append((r.density, getattr(r, metric)))
        for name, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        dense = [r for r in results if r.method == "dense"]
        if dense and metric == "perplexity":
            ax.axhline(dense[0].perplexity, color="black", linestyle="--", linewidth=1, label="dense")
        files.append(_save(fig, ax, "density ρ (fraction of FFN neurons kept)", label, out_dir / f"{metric}_vs_density.png"))
        glass = [r for r in results if r.lam is not None]
        if len({r.lam for r in glass}) > 1:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for method in GLASS_METHODS:
                # lambda = 0 is the static mask of the same prior and lambda = 1 is griffin: the curve's ends.
                static = next(name for name, (prior, lam) in METHODS.items() if lam == 0.0 and prior == METHODS[method][0])
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
