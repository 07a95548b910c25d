"""Decode speed of a GLASS artifact against its dense twin, on ONNX Runtime and ExecuTorch, side by side.

    python bench/decode.py [--model DIR] [--density 0.5] [--decode-tokens 64] [--threads 2] [--out docs]

For one model (default: a Llama-shaped model with random weights, hidden 1024, intermediate
4096, 4 layers; decode speed does not depend on the weights' values), this exports sparse
(griffin at --density) and dense twins to both runtimes through the same code path and prints
prefill ms, decode tokens/s, the sparse/dense speed-up and the ideal speed-up
1 / (1 - f (1 - rho)), f = the FFN's share of the bytes read per decoded token, computed from
the model's own parameter sizes. Writes decode_speedup.png and decode_speedup.json to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from glass_export.example import build_model, build_tokenizer  # noqa: E402
from glass_export.export import export_artifact  # noqa: E402
from glass_export.models import load_model  # noqa: E402
from glass_export.runtime import open_artifact  # noqa: E402
from glass_export.selection import SelectionConfig  # noqa: E402


def synthetic_model(directory: Path) -> Path:
    tokenizer = build_tokenizer()
    model = build_model("llama", seed=0, vocab_size=8192, hidden_size=1024, intermediate_size=4096,
                        num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=4,
                        tie_word_embeddings=False, max_position_embeddings=1024)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def ffn_share(model) -> tuple[float, dict]:
    """f: FFN bytes over all bytes read per decoded token (the embedding lookup reads one row)."""
    params = {id(p): (name, p) for name, p in model.named_parameters()}.values()
    ffn = sum(p.numel() * p.element_size() for name, p in params if ".mlp." in name)
    total = sum(p.numel() * p.element_size() for _, p in params)
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    per_token = total - (0 if tied else embedding.numel() * embedding.element_size())
    return ffn / per_token, {"ffn_bytes": ffn, "bytes_read_per_token": per_token, "tied_embeddings": tied}


def time_artifact(directory: Path, prompt: list[int], decode_tokens: int, threads: int) -> dict:
    backend = open_artifact(directory, threads=threads)
    pre = backend.prefill(prompt)  # warm-up
    start = time.perf_counter()
    pre = backend.prefill(prompt)
    prefill_ms = (time.perf_counter() - start) * 1e3
    state, token, steps = pre.state, int(np.argmax(pre.logits[-1])), []
    for position in range(len(prompt), len(prompt) + decode_tokens):
        start = time.perf_counter()
        logits, state = backend.decode(token, position, pre.indices, state)
        steps.append(time.perf_counter() - start)
        token = int(np.argmax(logits))
    step = statistics.median(steps[2:])  # the first steps warm caches and thread pools
    return {"prefill_ms": prefill_ms, "decode_tokens_per_s": 1.0 / step,
            "op": getattr(backend, "op_implementation", "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="Local model directory [default: synthetic]")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating sparse/dense rounds; medians reported")
    parser.add_argument("--targets", default="executorch,onnx")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model or synthetic_model(tmp / "model")
        model = load_model(model_dir)
        f, sizes = ffn_share(model)
        ideal = 1.0 / (1.0 - f * (1.0 - args.density))
        prompt = [1 + (7 * i) % 300 for i in range(args.prompt_tokens)]
        max_len = args.prompt_tokens + args.decode_tokens + 8
        cfg = model.config
        print(f"model: {cfg.model_type} hidden {cfg.hidden_size}, intermediate {cfg.intermediate_size}, "
              f"{cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}; FFN share of bytes per token f = {f:.3f}; "
              f"rho = {args.density}; ideal decode speed-up 1/(1 - f(1 - rho)) = {ideal:.3f}")
        rows = []
        for target in args.targets.split(","):
            dirs = {}
            for kind, config in (("sparse", SelectionConfig("griffin", args.density)), ("dense", SelectionConfig("dense"))):
                dirs[kind] = tmp / f"{target}-{kind}"
                print(f"exporting {target} {kind} ...", flush=True)
                export_artifact(model_dir, None, config, target, dirs[kind], max_seq_len=max_len)
            runs = {"sparse": [], "dense": []}
            for _ in range(args.rounds):  # alternate, so drift in machine speed hits both alike
                for kind in ("sparse", "dense"):
                    runs[kind].append(time_artifact(dirs[kind], prompt, args.decode_tokens, args.threads))
            med = {kind: {key: statistics.median(r[key] for r in runs[kind]) for key in ("prefill_ms", "decode_tokens_per_s")}
                   for kind in runs}
            speedup = med["sparse"]["decode_tokens_per_s"] / med["dense"]["decode_tokens_per_s"]
            rows.append({"runtime": target, "op": runs["sparse"][0]["op"], "sparse": med["sparse"], "dense": med["dense"],
                         "speedup": speedup, "ideal": ideal, "fraction_of_ideal": speedup / ideal})

    print(f"\n{'runtime':<11} {'sparse op':<28} {'prefill ms s/d':>16} {'decode tok/s s/d':>18} {'speed-up':>9} {'ideal':>6} {'of ideal':>8}")
    for r in rows:
        print(f"{r['runtime']:<11} {r['op'][:28]:<28} {r['sparse']['prefill_ms']:>7.1f}/{r['dense']['prefill_ms']:<8.1f} "
              f"{r['sparse']['decode_tokens_per_s']:>8.1f}/{r['dense']['decode_tokens_per_s']:<9.1f} "
              f"{r['speedup']:>9.3f} {r['ideal']:>6.3f} {r['fraction_of_ideal']:>8.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"density": args.density, "ffn_share": f, **sizes, "threads": args.threads,
              "decode_tokens": args.decode_tokens, "prompt_tokens": args.prompt_tokens, "rows": rows}
    (args.out / "decode_speedup.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "decode_speedup.png", args.density)
    print(f"wrote {args.out / 'decode_speedup.json'} and {args.out / 'decode_speedup.png'}")


def plot(rows: list[dict], path: Path, density: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["speedup"] for r in rows], 0.4, label="measured sparse/dense decode speed-up")
    ax.bar(x + 0.2, [r["ideal"] for r in rows], 0.4, label="ideal 1/(1 - f(1 - ρ))")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"{r['runtime']}\n({r['op'][:24]})" for r in rows], fontsize=8)
    ax.set_ylabel("decode speed-up vs dense twin")
    ax.set_title(f"GLASS decode at ρ = {density:g}")
    ax.set_ylim(0, 1.3 * max(max(r["speedup"], r["ideal"]) for r in rows))
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
