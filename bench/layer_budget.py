"""Per-layer density under a global budget (the GLASS paper's stated future work), measured in eager
PyTorch before any export supports it.

    python bench/layer_budget.py --model DIR --priors P.safetensors [--method i-glass --lambda 0.25]
        [--densities 0.5,0.25] [--rules uniform,coverage,impact] [--chat] [--max-new-tokens 64]
        [--out docs/quality/layer_budget]

Every rule keeps the same total, L x round(rho x m) neurons, so the decode reads the same bytes on
average; the kept count stays static per layer (graphs could keep static shapes). Rules, from the
impact prior (mean |z_i| x ||W_down[:, i]||, the calibration's I-GLASS prior) sorted per layer:

  uniform:  round(rho x m) in every layer (what `export` does);
  coverage: greedy steps of 32 neurons, each to the layer whose next 32 add the largest share of
            that layer's own impact (equalises the impact each layer keeps);
  impact:   the same greedy on absolute impact (layers with more impact, usually the late ones, get
            more neurons).

Both non-uniform rules start every layer at half the uniform count and stop at m. Within a layer the
method ranks neurons as usual (fused local and global ranks) and keeps its k_l best. The rules run on
the tuning half of the shipped prompts; the rule with the lowest tuning KL at each density is then
compared with uniform on the reporting half (paired bootstrap intervals, evaluation.paired_difference).
Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RULES = ("uniform", "coverage", "impact")
STEP = 32  # neurons per allocation step: a whole SIMD tile of the decode kernels


def allocate(impact: torch.Tensor, density: float, rule: str) -> list[int]:
    """Kept neurons per layer for `rule`, summing to layers x keep_count(density, m)."""
    from glass_export.selection import keep_count

    layers, m = impact.shape
    k = keep_count(density, m)
    if rule == "uniform":
        return [k] * layers
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: choose from {', '.join(RULES)}")
    cumulative = torch.sort(impact.double(), dim=1, descending=True).values.cumsum(1)
    scale = cumulative[:, -1] if rule == "coverage" else torch.ones(layers, dtype=torch.float64)
    kept = [min(m, max(STEP, k // 2 // STEP * STEP))] * layers
    budget = layers * k - sum(kept)

    def gain(layer: int, step: int) -> float:
        if kept[layer] + step > m:
            return -1.0
        return float((cumulative[layer, kept[layer] + step - 1] - cumulative[layer, kept[layer] - 1]) / scale[layer])

    while budget > 0:
        step = min(STEP, budget)
        best = max(range(layers), key=lambda layer: gain(layer, step))
        if gain(best, step) < 0:
            break
        kept[best] += step
        budget -= step
    return kept


def budget_backend(model, config, priors, info, keep: list[int]):
    """An eager GlassModel whose layer l keeps its keep[l] best neurons in the method's order."""
    from glass_export.eager import GlassModel, _kept_neuron_forward, sparse_ffns
    from glass_export.generation import PrefillResult
    from glass_export.selection import fused_keys, lambda_units, ranks

    class LayerBudgetModel(GlassModel):
        def select(self, local):
            lam = lambda_units(self.config.effective_lambda)
            local_rank = ranks(local) if lam > 0 else torch.zeros(self.num_layers, self.m, dtype=torch.int64)
            keys = fused_keys(local_rank, self.global_rank, lam)
            return [torch.sort(torch.topk(keys[layer], k, largest=False).indices).values
                    for layer, k in enumerate(keep)]

        def _prefill(self, ids):
            logits, self.cache, local, indices = self.prefill_tensors(torch.tensor([ids]))
            ragged = np.empty(len(indices), dtype=object)
            for layer, kept in enumerate(indices):
                ragged[layer] = kept.numpy()
            return PrefillResult(logits[0].float().numpy(), ragged, local.numpy())

        def sparse(self, indices):
            if self._forwards_for is not indices:  # one kept set per prompt, the same object every step
                self._forwards = [_kept_neuron_forward(ffn, torch.as_tensor(indices[layer]))
                                  for layer, ffn in enumerate(self.ffns)]
                self._forwards_for = indices
            return sparse_ffns(self.ffns, self._forwards)

    return LayerBudgetModel(model, config, priors, info=info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--priors", required=True, type=Path)
    parser.add_argument("--method", default="i-glass")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.25)
    parser.add_argument("--densities", default="0.5,0.25")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--chat", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--min-new-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("docs/quality/layer_budget"))
    args = parser.parse_args()

    from glass_export.evaluation import evaluate, load_scorer, make_protocol, paired_difference
    from glass_export.prompts import encode_prompt, read_prompt_set
    from glass_export.selection import METHODS, SelectionConfig

    tokenizer, model, info, priors = load_scorer(args.model, args.priors)
    protocol = make_protocol(model, tokenizer, args.max_new_tokens, args.min_new_tokens)
    halves = {half: [encode_prompt(tokenizer, p, args.chat) for p in read_prompt_set(None, half)]
              for half in ("tune", "report")}
    rules = args.rules.split(",")
    impact = priors.tensor("impact")
    record = {"model": info.to_dict(), "priors": str(args.priors), "method": args.method, "lambda": args.lam,
              **protocol.to_dict(), "chat_template": args.chat, "runs": [], "choices": []}

    def run(half: str, density: float, rule: str):
        config = SelectionConfig(args.method, density, args.lam if METHODS[args.method].takes_lambda else None)
        keep = allocate(impact, density, rule)
        backend = budget_backend(model, config, priors, info, keep)
        start = time.perf_counter()
        (result,) = evaluate(model, halves[half], [config], protocol, lambda _config: backend)
        low, high = result.kl_ci
        print(f"{half:6s} rho={density:g} {rule:8s} KL {result.kl:.4f} [{low:.3f}, {high:.3f}] "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        record["runs"].append({"half": half, "density": density, "rule": rule, "keep": keep, "kl": result.kl,
                               "kl_ci": result.kl_ci, "perplexity": result.perplexity, "tokens": result.tokens})
        return result

    for density in (float(d) for d in args.densities.split(",")):
        tuned = {rule: run("tune", density, rule) for rule in rules}
        best = min((r for r in rules if r != "uniform"), key=lambda r: tuned[r].kl)
        report = {rule: run("report", density, rule) for rule in ("uniform", best)}
        choice = {"density": density, "chosen_on_tuning": best,
                  "tuning_vs_uniform": paired_difference(tuned[best], tuned["uniform"]),
                  "report_vs_uniform": paired_difference(report[best], report["uniform"])}
        record["choices"].append(choice)
        d = choice["report_vs_uniform"]
        print(f"rho={density:g}: {best} minus uniform on the reporting half {d['kl_difference']:+.4f} "
              f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["| half | rho | rule | KL [95% CI] | perplexity |", "|---|---|---|---|---|"]
    for r in record["runs"]:
        lines.append(f"| {r['half']} | {r['density']:g} | {r['rule']} | {r['kl']:.4f} [{r['kl_ci'][0]:.3f}, "
                     f"{r['kl_ci'][1]:.3f}] | {r['perplexity']:.3f} |")
    for c in record["choices"]:
        d = c["report_vs_uniform"]
        lines.append(f"\nrho {c['density']:g}: {c['chosen_on_tuning']} (chosen on the tuning half) minus uniform on "
                     f"the reporting half: {d['kl_difference']:+.4f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], "
                     f"lower in {d['share_a_lower']:.0%} of resamples")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
