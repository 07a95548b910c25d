"""How often an artifact's kept set differs from eager PyTorch's at the top-k boundary, over many prompts.

    python bench/selection_swaps.py --model DIR --artifact DIR [--artifact DIR ...] [--prompts 200] [--chat]
        [--out swaps.json]

Float reduction order differs between runtimes, so two neurons whose local scores are within
rounding of each other can trade places at the top-k boundary (a tie swap): `glass-export verify`
reports those as "ties only". This counts, per artifact, the prompts whose kept sets are identical,
differ by ties only, or mismatch, the swapped neurons and how far apart in the method's order a
swapped pair lay, the prompts verify passes and the spread of their mean KL(reference || artifact),
on generated prompts (templates x topics, deterministic) plus the built-in instructions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TEMPLATES = [
    "Explain {} to a ten-year-old.",
    "List three surprising facts about {}.",
    "Write a short poem about {}.",
    "What are the pros and cons of {}?",
    "Summarise the history of {} in two sentences.",
    "Give me a tip for getting started with {}.",
    "Describe {} using only simple words.",
    "Why do people care about {}?",
]
TOPICS = [
    "volcanoes", "the moon", "coffee", "bicycles", "honeybees", "jazz", "the Roman Empire", "photosynthesis",
    "chess", "rain", "libraries", "electric cars", "origami", "glaciers", "the internet", "sourdough bread",
    "penguins", "recycling", "the Olympics", "solar panels", "mushrooms", "lighthouses", "trains", "yoga",
    "black holes", "gardening", "the printing press", "octopuses", "marathons", "bridges",
]


def generated_prompts(count: int) -> list[str]:
    from glass_export.prompts import read_prompts

    prompts = [template.format(topic) for topic in TOPICS for template in TEMPLATES]
    prompts += read_prompts(None)
    return prompts[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--artifact", type=Path, action="append", required=True)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--chat", action="store_true", help="wrap the prompts in the chat template")
    parser.add_argument("--atol", type=float, default=None, help="verify's atol for fp32 artifacts (default 1e-4)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from glass_export.cli import quiet_libraries
    from glass_export.models import load_tokenizer
    from glass_export.verify import verify_artifact

    quiet_libraries()
    prompts = generated_prompts(args.prompts)
    if args.chat:
        tokenizer = load_tokenizer(args.model)
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    results = {}
    for artifact in args.artifact:
        start = time.perf_counter()
        report = verify_artifact(artifact, args.model, prompts, steps=1, atol=args.atol)
        rows = report["prompts"]
        swapped = [r for r in rows if r["selection"] != "identical"]
        places = [abs(p["places"][0] - p["places"][1]) for r in swapped for s in r["swaps"] for p in s["pairs"]
                  if p["places"] is not None]
        results[str(artifact)] = {
            "runs_on": report["runs_on"], "prompts": len(prompts), **report["selection_summary"],
            "prompts_with_swaps": len(swapped), "swapped_neurons": sum(r["indices_differing"] for r in swapped),
            "max_place_gap": max(places, default=0), "verify_passed_prompts": sum(r["passed"] for r in rows),
            "kl_mean": {"median": float(np.median([r["kl_mean"] for r in rows])),
                        "max": max(r["kl_mean"] for r in rows)},
            "tolerance": report["tolerance"]["describe"], "seconds": time.perf_counter() - start,
        }
        print(json.dumps({str(artifact): results[str(artifact)]}, indent=2), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
