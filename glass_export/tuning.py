"""`glass-export tune`: choose lambda (and optionally density) for a model on held-out prompts.

The sweep (every method x density x lambda) runs eval's protocol (evaluation.py) on the tune half
of the prompts; for each method and density the lambda with the lowest KL(dense || sparse) there
is chosen (ties: the lower lambda). The chosen settings are then evaluated on the report half,
which played no part in the choice, next to griffin and the static mask of the same prior, with
paired bootstrap intervals; `--hindsight` also runs every swept lambda there, to show how far
the chosen one is from the best lambda in hindsight. With a KL budget, the recommended density
is the lowest swept density whose tuned KL on the tune half is within the budget.

The result is written as a copy of the priors whose metadata carries a `tuning` record;
`export` and `generate` read their default lambda from it (lambda_for), --lambda overrides.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import __version__
from .errors import GlassExportError
from .evaluation import (DEFAULT_MIN_NEW_TOKENS, GLASS_METHODS, RunResult, bootstrap_meta, eager_backends, evaluate,
                         load_scorer, make_protocol, markdown_table, paired_difference, plan_runs)
from .priors import Priors
from .quantization import QuantScheme
from .selection import DEFAULT_LAMBDA, METHODS, TUNE_LAMBDAS, SelectionConfig


@dataclass
class TuneResult:
    record: dict  # what the priors' metadata carries under "tuning"
    sweep: list[RunResult]  # tune half
    report: list[RunResult]  # report half
    table: str


def check_methods(methods) -> None:
    for method in methods:
        if method not in GLASS_METHODS:
            raise GlassExportError(f"tune chooses lambda, and method {method!r} takes none",
                                   f"pass --methods among: {', '.join(GLASS_METHODS)}")


def static_of(method: str) -> str:
    """The lambda = 0 method of the same prior (static-a for a-glass, static-i for i-glass)."""
    return next(m.name for m in METHODS.values() if m.fixed_lambda == 0.0 and m.prior == METHODS[method].prior)


def choose(sweep: list[RunResult], method: str, density: float) -> RunResult:
    """The run with the lowest KL on the tune half (ties: the lower lambda)."""
    return min((r for r in sweep if r.method == method and r.density == density), key=lambda r: (r.kl, r.lam))


def report_configs(chosen: list[RunResult], lambdas, hindsight: bool) -> list[SelectionConfig]:
    """What runs on the report half: each chosen setting, griffin and the static mask at its density, and with
    hindsight every swept lambda; each once."""
    configs: list[SelectionConfig] = []
    for r in chosen:
        wanted = [SelectionConfig(r.method, r.density, r.lam), SelectionConfig("griffin", r.density),
                  SelectionConfig(static_of(r.method), r.density)]
        if hindsight:
            wanted += [SelectionConfig(r.method, r.density, lam) for lam in lambdas]
        for config in wanted:
            if config not in configs:
                configs.append(config)
    return configs


def find(runs: list[RunResult], method: str, density: float, lam: float | None = None) -> RunResult:
    return next(r for r in runs if r.method == method and r.density == density and r.lam == lam)


def summarize_choice(best: RunResult, report: list[RunResult], hindsight: bool) -> dict:
    """The chosen setting's tune and held-out numbers, its paired comparisons and (hindsight) its gap."""
    held_out = find(report, best.method, best.density, best.lam)
    entry = {"method": best.method, "density": best.density, "lambda": best.lam, "tune_kl": best.kl,
             "tune_tokens": best.tokens, "report_kl": held_out.kl, "report_kl_ci": held_out.kl_ci,
             "report_perplexity": held_out.perplexity, "report_tokens": held_out.tokens}
    for name in ("griffin", static_of(best.method)):
        entry[f"vs_{name}"] = paired_difference(held_out, find(report, name, best.density))
    if hindsight:
        candidates = [r for r in report if r.method == best.method and r.density == best.density and r.lam is not None]
        top = min(candidates, key=lambda r: (r.kl, r.lam))
        entry["hindsight"] = {"lambda": top.lam, "report_kl": top.kl, "gap": held_out.kl - top.kl,
                              "relative_gap": held_out.kl / top.kl - 1.0 if top.kl > 0 else 0.0,
                              "rank": sorted(r.kl for r in candidates).index(held_out.kl) + 1,
                              "of": len(candidates), "vs_best": paired_difference(held_out, top)}
    return entry


def recommend_densities(chosen: list[RunResult], kl_budget: float) -> dict:
    """Per method: the lowest density whose tuned KL on the tune half is at most kl_budget (None: none is)."""
    result = {}
    for method in dict.fromkeys(r.method for r in chosen):
        fits = [r.density for r in chosen if r.method == method and r.kl <= kl_budget]
        result[method] = min(fits) if fits else None
    return result


def run_tuning(model_dir, priors_path, out, methods=("i-glass",), densities=(0.5,), lambdas=TUNE_LAMBDAS,
               kl_budget: float | None = None, prompts_path=None, chat: bool = False, max_new_tokens: int = 128,
               min_new_tokens: int = DEFAULT_MIN_NEW_TOKENS, stop_at_eos: bool = True, hindsight: bool = False,
               report_dir=None, force: bool = False, progress=None, on_runs=None) -> TuneResult:
    """`glass-export tune`: check inputs and outputs, sweep on the tune half, report on the report half, write the
    tuned priors (and report_dir: results.json, results.md). on_runs(total) is told the number of runs first."""
    from .outputs import OutputPlan
    from .prompts import describe_prompt_set, encode_prompt, read_prompt_set

    check_methods(methods)
    if kl_budget is not None and kl_budget <= 0:
        raise GlassExportError(f"--kl-budget must be positive, got {kl_budget}", "pass e.g. --kl-budget 0.5")
    configs = plan_runs(list(methods), list(densities), list(lambdas))
    texts = {split: read_prompt_set(prompts_path, split) for split in ("tune", "report")}
    inputs = [Path(p) for p in (model_dir, priors_path, prompts_path) if p is not None]
    plan = OutputPlan(Path(out), kind="priors", force=force, inputs=inputs)
    report_plan = (OutputPlan(Path(report_dir), kind="eval", force=force, inputs=[*inputs, Path(out)], option="--report")
                   if report_dir is not None else None)
    tokenizer, model, info, priors = load_scorer(model_dir, priors_path)
    protocol = make_protocol(model, tokenizer, max_new_tokens, min_new_tokens, stop_at_eos)
    ids = {split: [encode_prompt(tokenizer, t, chat) for t in group] for split, group in texts.items()}
    backend_for = eager_backends(model, priors, QuantScheme(), info)
    if on_runs is not None:
        # report split, per density: griffin, and per method its static mask and the chosen (or every) lambda
        on_runs(len(configs) + len(densities) * (1 + len(methods) * (1 + (len(set(lambdas)) if hindsight else 1))))
    sweep = evaluate(model, ids["tune"], configs, protocol, backend_for, progress)
    best = [choose(sweep, method, density) for density in densities for method in methods]
    report = evaluate(model, ids["report"], report_configs(best, lambdas, hindsight), protocol, backend_for, progress)
    record = {
        "chosen": [summarize_choice(b, report, hindsight) for b in best],
        "objective": "lowest mean KL(dense || sparse) on the tune split; reported on the held-out report split",
        "lambdas": list(lambdas), "densities": list(densities),
        "prompts": {"tune": describe_prompt_set(prompts_path, "tune", len(texts["tune"])),
                    "report": describe_prompt_set(prompts_path, "report", len(texts["report"]))},
        "protocol": protocol.to_dict(), "chat_template": chat, "bootstrap": bootstrap_meta(),
        "tool_version": __version__,
    }
    if kl_budget is not None:
        record.update(kl_budget=kl_budget, recommended_density=recommend_densities(best, kl_budget))
    table = describe(record, sweep, report)
    tuned = Priors(priors.activation, priors.impact, priors.model, priors.tokens, priors.corpus, priors.tool_version,
                   tuning=record)
    if report_plan is not None:
        with report_plan.directory() as tmp:
            runs = {"tune": [asdict(r) for r in sweep], "report": [asdict(r) for r in report]}
            (tmp / "results.json").write_text(json.dumps({"tuning": record, "runs": runs}, indent=2) + "\n")
            (tmp / "results.md").write_text(table)
    with plan.file() as tmp:
        tuned.save(tmp)
    return TuneResult(record, sweep, report, table)


def describe(record: dict, sweep: list[RunResult], report: list[RunResult]) -> str:
    """The markdown the command prints: the sweep, the choice and its held-out check, the report half's runs."""
    prompts = record["prompts"]
    lines = [f"Sweep on the tune split ({prompts['tune']['prompts']} prompts):", "", markdown_table(sweep),
             f"Chosen, checked on the held-out report split ({prompts['report']['prompts']} prompts; "
             "differences are KL(chosen) − KL(other), paired bootstrap 95% CI):", "",
             "| method | density | lambda | tune KL | held-out KL [95% CI] | − griffin | − static | best λ in hindsight |",
             "|---|---|---|---|---|---|---|---|"]

    def diff(d):
        return f"{d['kl_difference']:+.3g} [{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}]"

    for e in record["chosen"]:
        static = diff(e[f"vs_{static_of(e['method'])}"])
        hind = e.get("hindsight")
        hind_text = ("" if hind is None else f"{hind['lambda']:g} (KL {hind['report_kl']:.4g}; chosen is "
                     f"{hind['relative_gap']:+.1%}, rank {hind['rank']}/{hind['of']})")
        lines.append(f"| {e['method']} | {e['density']:g} | {e['lambda']:g} | {e['tune_kl']:.4g} | "
                     f"{e['report_kl']:.4g} [{e['report_kl_ci'][0]:.3g}, {e['report_kl_ci'][1]:.3g}] | "
                     f"{diff(e['vs_griffin'])} | {static} | {hind_text} |")
    if "kl_budget" in record:
        lines.append("")
        for method, density in record["recommended_density"].items():
            lines.append(f"KL budget {record['kl_budget']:g}: {method} " +
                         (f"meets it down to density {density:g} (tune split)" if density is not None
                          else "meets it at none of the swept densities"))
    lines += ["", "Report split:", "", markdown_table(report)]
    return "\n".join(lines)


def lambda_for(method: str, density: float, lam: float | None, priors: Priors | None,
               priors_path=None) -> tuple[float | None, str | None]:
    """The lambda a command uses for method at density, and where it came from: --lambda, the priors' tune
    record (nearest tuned density), or the built-in default. (None, None) for methods that take no lambda
    (an explicit lam is passed through, for SelectionConfig to refuse)."""
    if method not in METHODS or not METHODS[method].takes_lambda:
        return lam, None
    if lam is not None:
        return lam, "from --lambda"
    entry = priors.tuned(method, density) if priors is not None else None
    if entry is not None:
        at = f"at density {entry['density']:g}" + ("" if entry["density"] == density else f", the nearest to {density:g}")
        return entry["lambda"], (f"tuned by `glass-export tune` for {method} {at}, read from {priors_path}; "
                                 "--lambda overrides")
    hint = f"; these priors carry no tuned lambda for {method}: `glass-export tune` chooses one" if priors is not None else ""
    return DEFAULT_LAMBDA, f"the built-in default{hint}"
