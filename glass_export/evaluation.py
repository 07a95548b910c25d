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
from .generation import Backend, generate
from .models import ModelInfo, model_info
from .quantization import QuantScheme
from .selection import METHODS, SelectionConfig, check_density, lambda_units

GLASS_METHODS = tuple(name for name, method in METHODS.items() if method.takes_lambda)


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
            if not METHODS[method].sparse_decode:
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
        # KL >= 0 holds exactly; in float a near-identical pair can give -1e-9: left as computed, so a
        # sign error in the formula would show
        kl += float((p_dense_log.exp() * (p_dense_log - p_sparse_log)).sum())
        count += 1
    return nll, kl, count


BackendFor = Callable[[SelectionConfig], Backend]


def evaluate(model, prompts_ids: list[list[int]], runs: list[SelectionConfig], max_new_tokens: int,
             backend_for: BackendFor, progress: Callable[[], None] | None = None) -> list[RunResult]:
    """Score every run on every prompt: backend_for(config) generates (eager GLASS or an artifact), the
    fp32 dense `model` scores."""
    results = []
    for config in runs:
        backend = backend_for(config)
        nll = kl = 0.0
        count = 0
        for prompt in prompts_ids:
            generation = generate(backend, prompt, max_new_tokens, keep_logits=True)
            run_nll, run_kl, run_count = score_generation(dense_scores(model, prompt, generation.tokens),
                                                          generation.step_logits, generation.tokens)
            nll, kl, count = nll + run_nll, kl + run_kl, count + run_count
        if count == 0:
            raise GlassExportError("no position was decoded sparsely", "raise --max-new-tokens above 1")
        results.append(RunResult(config.method, config.density if config.sparse_decode else 1.0,
                                 config.effective_lambda if config.spec.takes_lambda else None,
                                 math.exp(nll / count), kl / count, count))
        if progress is not None:
            progress()
    add_griffin_comparison(results)
    return results


def run_evaluation(model_dir, out, priors_path=None, prompts_path=None, methods=tuple(METHODS),
                   densities=(0.25, 0.5, 0.75), lambdas=(0.25, 0.5, 0.75), max_new_tokens: int = 128,
                   chat: bool = False, artifact=None, quant: QuantScheme = QuantScheme(), force: bool = False,
                   progress=None) -> tuple[list[RunResult], str]:
    """`glass-export eval`: check inputs and --out, run, write results.json, results.md and the plots.

    With `artifact` the artifact's own method is evaluated as shipped (its runtime generates);
    otherwise every method x density (x lambda) runs in eager PyTorch, quantised by `quant`."""
    import json
    from pathlib import Path

    from .models import load_model, load_tokenizer
    from .outputs import OutputPlan
    from .priors import load_priors
    from .prompts import encode_prompt, read_prompts

    prompt_texts = read_prompts(prompts_path)
    inputs = [Path(p) for p in (model_dir, priors_path, prompts_path, artifact) if p is not None]
    plan = OutputPlan(Path(out), kind="eval", force=force, inputs=inputs)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    info = model_info(model)
    if artifact is not None:
        from .runtime import open_artifact

        shipped = open_artifact(artifact)
        if shipped.manifest.model.fingerprint != info.fingerprint:
            raise GlassExportError(f"artifact {artifact} was exported from another model", "pass its own --model")
        runs, backend_for = [shipped.manifest.selection], lambda config: shipped
        quant = shipped.manifest.quant
    else:
        runs = plan_runs(methods, densities, lambdas)
        loaded = load_priors(priors_path) if priors_path is not None else None
        if loaded is None and any(r.prior_name for r in runs):
            raise GlassExportError("the methods include ones that need global priors",
                                   "pass --priors, or drop them from --methods")
        if loaded is not None:
            loaded.check_matches(info)
        backend_for = eager_backends(model, loaded, quant, info)
    prompt_ids = [encode_prompt(tokenizer, p, chat) for p in prompt_texts]
    results = evaluate(model, prompt_ids, runs, max_new_tokens, backend_for, progress)
    meta = {"model": info.to_dict(), "prompts": len(prompt_texts), "max_new_tokens": max_new_tokens,
            "chat_template": chat, "artifact": None if artifact is None else str(artifact),
            "quantization": quant.to_dict(),
            "priors": None if priors_path is None else str(priors_path)}
    table = markdown_table(results)
    with plan.directory() as tmp:
        (tmp / "results.json").write_text(json.dumps(to_json(results, meta), indent=2) + "\n")
        (tmp / "results.md").write_text(table)
        plot(results, tmp)
    return results, table


def eager_backends(model, priors, quant: QuantScheme, info: ModelInfo) -> BackendFor:
    """One eager GlassModel per run config; the quantised model copy is made once."""
    from .quantization import quantize_model

    reference = quantize_model(model, quant)
    cache: dict[SelectionConfig, GlassModel] = {}

    def backend_for(config: SelectionConfig) -> GlassModel:
        if config not in cache:
            cache[config] = GlassModel(reference, config, priors, info=info)
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
