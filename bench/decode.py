"""Decode speed of GLASS artifacts against their dense twins and against the stock quantised paths,
side by side on one machine.

    python bench/decode.py --model DIR [--priors P.safetensors --method i-glass --lambda 0.25]
        [--density 0.5] [--schemes int4,int8,fp32] [--executorch-schemes int4] [--targets onnx,executorch]
        [--peers genai,llamacpp --gguf FILE.gguf] [--chat] [--decode-tokens 64] [--rounds 3]
        [--threads 2] [--work build/bench] [--baseline-work DIR] [--out docs/real]

For each target x weight scheme this exports (or reuses, from --work) a sparse artifact (the
method at --density) and its dense twin through the same code path, then times them in
alternating rounds with the peers: ONNX Runtime GenAI's model builder (int4, from the same model
directory; `pip install -e .[bench]`) and llama.cpp (llama-cpp-python) on a GGUF file. Every engine
decodes the same prompt tokens, greedily, on the same number of threads.

Reported per row (medians over rounds): prefill ms, decode tokens/s in steady state (the median
step after two warm-up steps), decode tokens/s over the whole generation (first step included:
the sparse artifacts copy the kept rows together on their first decode step), artifact MB. Then
the ratios: sparse / dense twin per target and scheme, and our int4 sparse against each peer.
With --baseline-work (a --work directory an earlier revision exported), that revision's artifacts
are timed in the same rounds, so a change is measured side by side rather than across runs (these
machines drift by a quarter between runs). Writes decode_speedup.json and decode_speedup.png to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

import numpy as np  # noqa: E402


PAUSE_BETWEEN_ENGINES_S = 0.25
BASELINE = "(baseline)"  # the rows of --baseline-work's artifacts


@dataclass
class Timing:
    prefill_ms: float
    steady_tokens_per_s: float
    overall_tokens_per_s: float


def time_steps(prefill, step, prompt: list[int], decode_tokens: int) -> Timing:
    """prefill(prompt) -> first token; step(token) -> next token. One generation, timed."""
    start = time.perf_counter()
    token = prefill(prompt)
    prefill_ms = (time.perf_counter() - start) * 1e3
    steps = []
    begin = time.perf_counter()
    for _ in range(decode_tokens):
        start = time.perf_counter()
        token = step(token)
        steps.append(time.perf_counter() - start)
    overall = decode_tokens / (time.perf_counter() - begin)
    return Timing(prefill_ms, 1.0 / statistics.median(steps[2:]), overall)


class Ours:
    def __init__(self, directory: Path, threads: int):
        from glass_export.runtime import open_artifact

        self.backend = open_artifact(directory, threads=threads)
        self.description = self.backend.description
        self.bytes = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())

    def run(self, prompt, decode_tokens) -> Timing:
        backend = self.backend
        return time_steps(lambda ids: int(np.argmax(backend.prefill(ids).logits[-1])),
                          lambda token: int(np.argmax(backend.decode(token))), prompt, decode_tokens)


class GenAI:
    """ONNX Runtime GenAI's model builder output, run by onnxruntime-genai."""

    def __init__(self, directory: Path, threads: int):
        import onnxruntime_genai as og

        config = json.loads((directory / "genai_config.json").read_text())
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
        (directory / "genai_config.json").write_text(json.dumps(config, indent=4))
        self.og = og
        self.model = og.Model(str(directory))
        self.description = f"onnxruntime-genai {og.__version__}, builder int4"
        self.bytes = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())

    def run(self, prompt, decode_tokens) -> Timing:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + decode_tokens + 1, do_sample=False)
        generator = og.Generator(self.model, params)

        def prefill(ids):
            generator.append_tokens(ids)
            return 0

        def step(_token):
            generator.generate_next_token()
            return 0

        return time_steps(prefill, step, prompt, decode_tokens)


@contextlib.contextmanager
def llama_cpp_without_extra_buffer_types():
    """Load llama.cpp models with `use_extra_bufts = False` (llama.cpp's --no-repack): on CPUs with AMX,
    llama.cpp 0.3.36 moves Q4_1 matmuls to its AMX backend, which crashes (SIGSEGV in
    ggml_backend_amx_mul_mat, seen on a Xeon with AMX); without AMX the extra types only repack other
    quantisation types, so Q4_1 runs the same kernels either way."""
    import llama_cpp
    import llama_cpp.llama as high_level

    default = llama_cpp.llama_model_default_params

    def params():
        value = default()
        value.use_extra_bufts = False
        return value

    high_level.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        high_level.llama_cpp.llama_model_default_params = default


def cpu_has_amx() -> bool:
    return any(line.startswith("flags") and " amx_int8" in line for line in open("/proc/cpuinfo"))


class LlamaCpp:
    def __init__(self, gguf: Path, threads: int, context: int):
        from llama_cpp import Llama, __version__

        amx = cpu_has_amx()
        with llama_cpp_without_extra_buffer_types() if amx else contextlib.nullcontext():
            self.llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=context,
                             n_batch=context, verbose=False)
        self.description = (f"llama.cpp (llama-cpp-python {__version__}), {gguf.name}"
                            + (", no extra buffer types (its AMX path crashes)" if amx else ""))
        self.bytes = gguf.stat().st_size

    def run(self, prompt, decode_tokens) -> Timing:
        llm = self.llm
        llm.reset()

        def prefill(ids):
            llm.eval(ids)
            return int(np.argmax(llm.scores[llm.n_tokens - 1]))

        def step(token):
            llm.eval([token])
            return int(np.argmax(llm.scores[llm.n_tokens - 1]))

        return time_steps(prefill, step, prompt, decode_tokens)


def export_all(args, work: Path, prompt_len: int) -> dict:
    from glass_export.export import export_artifact
    from glass_export.quantization import QuantScheme
    from glass_export.selection import SelectionConfig

    sparse = SelectionConfig(args.method, args.density, args.lam)
    dirs = {}
    for target in args.targets:
        for scheme in args.schemes_of[target]:
            for kind, config in (("sparse", sparse), ("dense", SelectionConfig("dense"))):
                out = work / f"{target}-{scheme}-{kind}-{config.describe().replace(' ', '_')}"
                if args.fresh or not (out / "glass.json").is_file():
                    print(f"exporting {out.name} ...", flush=True)
                    start = time.perf_counter()
                    export_artifact(args.model, args.priors, config, target, out,
                                    max_seq_len=prompt_len + args.decode_tokens + 8, force=True,
                                    quant=QuantScheme(scheme))
                    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
                dirs[(target, scheme, kind)] = out
    return dirs


def build_genai(args, work: Path) -> Path:
    out = work / "genai-int4"
    if not (out / "genai_config.json").is_file():
        print("building ONNX Runtime GenAI int4 ...", flush=True)
        import subprocess

        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(args.model), "-o", str(out),
                        "-p", "int4", "-e", "cpu", "-c", str(work / "genai-cache")], check=True, capture_output=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="Local model directory (e.g. convert-gguf's output)")
    parser.add_argument("--priors", type=Path, default=None)
    parser.add_argument("--method", default="griffin")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.25)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--schemes", default="int4,int8,fp32")
    parser.add_argument("--executorch-schemes", default=None,
                        help="weight schemes for --targets executorch (default: --schemes; its exports take minutes)")
    parser.add_argument("--targets", default="onnx,executorch")
    parser.add_argument("--peers", default="genai,llamacpp")
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file for llama.cpp")
    parser.add_argument("--chat", action="store_true", help="Wrap the prompt in the chat template")
    parser.add_argument("--prompt", default="Write a short story about a lighthouse keeper who finds a message in a "
                                            "bottle, in three paragraphs.")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported")
    parser.add_argument("--work", type=Path, default=Path("build/bench"), help="where artifacts are kept between runs")
    parser.add_argument("--baseline-work", type=Path, default=None,
                        help="--work of an earlier revision: its artifacts of the same names join the rounds")
    parser.add_argument("--fresh", action="store_true", help="re-export artifacts --work already holds (after code changes)")
    parser.add_argument("--export-only", action="store_true", help="export what --work lacks, then stop (no timing)")
    parser.add_argument("--out", type=Path, default=Path("docs/real"))
    args = parser.parse_args()
    args.schemes, args.targets = args.schemes.split(","), args.targets.split(",")
    args.schemes_of = {target: args.schemes for target in args.targets}
    if args.executorch_schemes:
        args.schemes_of["executorch"] = args.executorch_schemes.split(",")
    peers = [p for p in args.peers.split(",") if p]
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import glass_export  # noqa: F401  (first: its thread settings must precede torch's import)
    import torch

    from glass_export.cli import quiet_libraries
    from glass_export.models import load_tokenizer
    from glass_export.prompts import encode_prompt
    from glass_export.selection import METHODS

    if args.method not in METHODS:
        parser.error(f"--method must be one of {', '.join(METHODS)}")
    args.lam = args.lam if METHODS[args.method].takes_lambda else None  # one fact for the export and the JSON

    torch.set_num_threads(args.threads)
    quiet_libraries()
    prompt = encode_prompt(load_tokenizer(args.model), args.prompt, args.chat)
    args.work.mkdir(parents=True, exist_ok=True)
    dirs = export_all(args, args.work, len(prompt))
    if "genai" in peers:
        genai_dir = build_genai(args, args.work)
    if args.export_only:
        return
    engines = {f"{t} {s} {k}": Ours(d, args.threads) for (t, s, k), d in dirs.items()}
    if args.baseline_work:
        for (t, s, k), d in dirs.items():
            if (args.baseline_work / d.name / "glass.json").is_file():
                engines[f"{t} {s} {k} {BASELINE}"] = Ours(args.baseline_work / d.name, args.threads)
    if "genai" in peers:
        engines["onnxruntime-genai int4"] = GenAI(genai_dir, args.threads)
    if "llamacpp" in peers:
        if args.gguf is None:
            parser.error("--peers llamacpp needs --gguf")
        engines[f"llama.cpp {args.gguf.stem.split('.')[-1]}"] = LlamaCpp(args.gguf, args.threads,
                                                                        len(prompt) + args.decode_tokens + 8)
    runs = {name: [] for name in engines}
    for round_ in range(args.rounds + 1):  # round 0 warms every engine up and is not counted
        for name, engine in engines.items():
            # The engines share this process: after a run, ONNX Runtime's and llama.cpp's pool threads keep
            # spinning for a while, on the very cores the next engine wants (measured: ExecuTorch's GLASS
            # program right after an ONNX Runtime one, 134 against 153 tokens/s run alone). Let them park.
            time.sleep(PAUSE_BETWEEN_ENGINES_S)
            timing = engine.run(prompt, args.decode_tokens)
            if round_ > 0:
                runs[name].append(timing)
        print(f"round {round_} done", flush=True)

    rows = []
    for name, timings in runs.items():
        rows.append({"name": name, "engine": engines[name].description, "artifact_mb": engines[name].bytes / 1e6,
                     **{key: statistics.median(getattr(t, key) for t in timings) for key in asdict(timings[0])}})
    by_name = {r["name"]: r for r in rows}
    ratios = {}
    for target in args.targets:
        for scheme in args.schemes_of[target]:
            sparse, dense = by_name[f"{target} {scheme} sparse"], by_name[f"{target} {scheme} dense"]
            ratios[f"{target} {scheme}: sparse / dense twin"] = sparse["steady_tokens_per_s"] / dense["steady_tokens_per_s"]
            old = {kind: by_name.get(f"{target} {scheme} {kind} {BASELINE}") for kind in ("sparse", "dense")}
            if None not in old.values():
                ratios[f"{target} {scheme} {BASELINE}: sparse / dense twin"] = (old["sparse"]["steady_tokens_per_s"]
                                                                             / old["dense"]["steady_tokens_per_s"])
                for kind, row in (("sparse", sparse), ("dense", dense)):
                    ratios[f"{target} {scheme} {kind}: this revision / {BASELINE}"] = (
                        row["steady_tokens_per_s"] / old[kind]["steady_tokens_per_s"])
    ours = by_name.get("onnx int4 sparse")
    for peer in [n for n in by_name if n.startswith(("onnxruntime-genai", "llama.cpp"))]:
        if ours is not None:
            ratios[f"onnx int4 sparse / {peer}"] = ours["steady_tokens_per_s"] / by_name[peer]["steady_tokens_per_s"]
    print(f"\nprompt {len(prompt)} tokens, {args.decode_tokens} greedy tokens, {args.threads} threads, "
          f"{args.rounds} alternating rounds (medians); sparse = {args.method} at rho {args.density}")
    print(f"{'engine':<36} {'prefill ms':>10} {'decode tok/s':>13} {'(whole gen.)':>13} {'MB':>8}")
    for r in rows:
        print(f"{r['name']:<36} {r['prefill_ms']:>10.1f} {r['steady_tokens_per_s']:>13.1f} "
              f"{r['overall_tokens_per_s']:>13.1f} {r['artifact_mb']:>8.1f}")
    for name, value in ratios.items():
        print(f"{name:<60} {value:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"model": str(args.model), "prompt_tokens": len(prompt), "decode_tokens": args.decode_tokens,
              "threads": args.threads, "rounds": args.rounds, "method": args.method, "density": args.density,
              "lambda": args.lam, "rows": rows, "ratios": ratios,
              "machine": machine()}
    (args.out / "decode_speedup.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, args.out / "decode_speedup.png", result)
    print(f"wrote {args.out / 'decode_speedup.json'} and {args.out / 'decode_speedup.png'}")


def machine() -> str:
    """CPU, cores and last-level cache: whether the int4 weights (~90 MB) fit in it decides how memory-bound decode is."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"))
    cache = f", last-level cache {caches[-1].read_text().strip()}" if caches else ""
    return f"{model}, {os.cpu_count()} cores{cache}"


def plot(rows: list[dict], path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.4))
    names = [r["name"] for r in rows]
    colors = ["tab:green" if n.endswith("sparse") else "tab:blue" if n.endswith("dense") else "tab:gray" for n in names]
    ax.barh(names, [r["steady_tokens_per_s"] for r in rows], color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("decode tokens/s (higher is better)")
    ax.set_title(f"{Path(result['model']).name}: {result['method']} at ρ {result['density']:g} (green) vs dense "
                 f"(blue) vs stock (gray), {result['threads']} threads", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
