"""One table from several `glass-export eval` / `tune --report` results on the same prompts and protocol.

    python scripts/quality_tables.py docs/quality/report_baselines/results.json \
        docs/quality/tune_rho_0.5/results.json docs/quality/report_glass/results.json

It prints the joined table, then the paired KL difference of every two sparse runs at the same density.
Runs are taken from each eval's results.json, and from the report split of a tune report. Generation is
greedy and deterministic, so a run present in two files must have the same numbers there (checked). The
intervals and the paired KL differences to griffin are recomputed over the joined runs (bootstrap.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from glass_export.evaluation import (PromptScore, RunResult, add_griffin_comparison, add_intervals, kl_differences,
                                     markdown_table)
from glass_export.selection import METHODS


def runs_of(path: Path) -> tuple[dict, list[RunResult]]:
    data = json.loads(path.read_text())
    if "tuning" in data:  # a tune report: its held-out runs
        meta, runs = data["tuning"]["prompts"]["report"], data["runs"]["report"]
        protocol = data["tuning"]["protocol"]
    else:
        meta, runs = data["prompt_set"], data["runs"]
        protocol = {k: data[k] for k in ("max_new_tokens", "min_new_tokens", "stop_at_eos", "eos_token_ids")}
    fields = RunResult.__dataclass_fields__
    results = [RunResult(**{**{k: r[k] for k in fields}, "per_prompt": [PromptScore(**p) for p in r["per_prompt"]]})
               for r in runs]
    return {"prompts": meta, "protocol": protocol, "chat": data.get("chat_template", data.get("tuning", {}).get(
        "chat_template"))}, results


def main(paths: list[str]) -> None:
    setup, joined = None, {}
    for path in map(Path, paths):
        mine, runs = runs_of(path)
        if setup is not None and mine != setup:
            sys.exit(f"{path} used other prompts or another protocol: {mine} against {setup}")
        setup = mine
        for r in runs:
            key = (r.method, r.density, r.lam)
            if key in joined and abs(joined[key].kl - r.kl) > 1e-9 * max(1.0, r.kl):
                sys.exit(f"{path}: {r.label} has KL {r.kl}, another file {joined[key].kl}")
            joined.setdefault(key, r)
    order = list(METHODS)
    runs = sorted(joined.values(), key=lambda r: (METHODS[r.method].sparse_decode, -r.density, order.index(r.method),
                                                  r.lam or 0))
    add_griffin_comparison(runs)
    add_intervals(runs)
    print(f"Prompts: {setup['prompts']}; protocol: {setup['protocol']}; chat template: {setup['chat']}\n")
    print(markdown_table(runs))
    print("Paired differences (same prompts, same bootstrap draws):\n")
    print("| a | b | KL(a) − KL(b) [95% CI] | share of resamples with a lower |\n|---|---|---|---|")
    for d in kl_differences(runs):
        print(f"| {d['a']} | {d['b']} | {d['kl_difference']:+.4g} [{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}] | "
              f"{d['share_a_lower']:.1%} |")


if __name__ == "__main__":
    main(sys.argv[1:])
