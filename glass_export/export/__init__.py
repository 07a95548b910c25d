"""`glass-export export`: a two-graph GLASS artifact for ONNX Runtime or ExecuTorch.

One flow for every target: load the model once (its ModelInfo and fingerprint, the priors'
check), hand an ExportContext to the target's recipe, which writes its graphs into a temporary
directory, then write the tokenizer and the manifest (with every file's size and sha256). The
temporary directory replaces --out only when everything succeeded.

A recipe is a module with `STEPS` (its progress steps, in order), `WEIGHT_SCHEMES` (the --quant
values it can write), `check_quant(scheme)` (its other refusals) and `export(context) -> RecipeOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..artifact import KV_HEADS_FIRST, PRIORS_NAME, TARGET_FILES, KVLayout, Manifest, TokenizerInfo
from ..errors import GlassExportError
from ..models import ModelInfo
from ..outputs import OutputPlan
from ..priors import Priors
from ..quantization import QuantScheme
from ..selection import SelectionConfig

Step = Callable[[str], None]  # progress callback: the step starting now


@dataclass
class ExportContext:
    """What a recipe gets: the loaded model and every choice, checked."""

    model: torch.nn.Module
    info: ModelInfo
    selection: SelectionConfig
    quant: QuantScheme
    priors: Priors | None
    global_rank: torch.Tensor | None  # ranks of the selection's prior, or None
    max_seq_len: int
    out: Path  # the temporary directory to write into
    step: Step
    tokenizer: object = None  # the model's tokenizer (qnn: the calibration prompts)
    htp_arch: int | None = None  # qnn: also compile the graphs into QNN context binaries for this HTP
    prefill_buckets: tuple[int, ...] | None = None  # qnn: the prompt buckets (None: the recipe's defaults)


@dataclass
class RecipeOutput:
    graphs: dict  # for the manifest: what each graph / method takes and returns
    runtime: dict  # the target's details (custom ops, native library, sizes)
    kv_storage: str  # how the KV cache travels between prefill and decode
    kv_layout: str = KV_HEADS_FIRST
    files: dict | None = None  # role -> file name, when not the target's usual TARGET_FILES


def recipes() -> dict:
    from . import executorch_export, onnx_export, qnn_export

    return {"onnx": onnx_export, "executorch": executorch_export, "qnn": qnn_export}


COMMON_FIRST = ("loading model",)
COMMON_LAST = ("writing manifest and tokenizer",)


def export_steps(target: str) -> list[str]:
    """Every progress step of an export to target, in order (the CLI's progress bar)."""
    return [*COMMON_FIRST, *recipe_for(target).STEPS, *COMMON_LAST]


def recipe_for(target: str):
    table = recipes()
    if target not in table:
        raise GlassExportError(f"unknown target {target!r}", f"choose one of: {', '.join(table)}")
    return table[target]


def check_request(target: str, quant: QuantScheme, max_seq_len: int, htp_arch: int | None = None,
                  prefill_buckets: tuple[int, ...] | None = None) -> None:
    """Refusals that need no model: before any loading."""
    recipe = recipe_for(target)
    if prefill_buckets is not None:
        if target != "qnn":
            raise GlassExportError(f"--prefill-buckets sizes the NPU's static prefill graphs; --target {target} "
                                   "takes prompts of any length", "add --target qnn, or drop --prefill-buckets")
        recipe.prefill_buckets(prefill_buckets, max_seq_len)
    if htp_arch is not None:
        from ..runtime.qnn_backend import QNN_REQUIREMENT, qnn_available

        if target != "qnn":
            raise GlassExportError(f"--htp-arch compiles for Qualcomm's HTP; --target {target} has no use for it",
                                   "add --target qnn, or drop --htp-arch")
        if not qnn_available():
            raise GlassExportError("--htp-arch needs the QNN execution provider to compile the context binary",
                                   f'pip install "{QNN_REQUIREMENT}" (or glass-export[npu])')
    if quant.weights not in recipe.WEIGHT_SCHEMES:
        raise GlassExportError(f"--target {target} cannot write --quant {quant.weights} weights",
                               f"choose one of: {', '.join(recipe.WEIGHT_SCHEMES)}")
    recipe.check_quant(quant)
    if max_seq_len < 2:
        raise GlassExportError(f"--max-seq-len must be at least 2, got {max_seq_len}")


def export_artifact(model_dir: Path, priors_path: Path | None, config: SelectionConfig, target: str, out: Path,
                    max_seq_len: int = 512, force: bool = False, step: Step = lambda _: None,
                    quant: QuantScheme = QuantScheme(), htp_arch: int | None = None,
                    prefill_buckets: tuple[int, ...] | None = None) -> Manifest:
    """Load, export and write an artifact directory atomically; returns its manifest."""
    from ..eager import eos_token_ids
    from ..models import load_model, load_tokenizer, model_info
    from ..models.adapter import sliding_window
    from ..priors import load_priors
    from ..selection import ranks

    check_request(target, quant, max_seq_len, htp_arch, prefill_buckets)
    if config.prior_name is not None and priors_path is None:
        raise GlassExportError(f"method {config.method} needs global priors", "pass --priors from `glass-export calibrate`")
    inputs = [Path(model_dir)] + ([Path(priors_path)] if priors_path is not None else [])
    plan = OutputPlan(Path(out), kind="artifact", force=force, inputs=inputs)  # refused now, not after the export
    step("loading model")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    info = model_info(model)
    priors = None
    if config.prior_name is not None:
        priors = load_priors(priors_path)
        priors.check_matches(info)
    window = sliding_window(model.config)
    if window is not None and max_seq_len > window:
        raise GlassExportError(
            f"--max-seq-len {max_seq_len} exceeds the sliding window ({window}) of this {model.config.model_type} model",
            f"export with --max-seq-len {window} or less",
        )
    recipe = recipe_for(target)
    with plan.directory() as tmp:
        context = ExportContext(model, info, config, quant, priors,
                                ranks(priors.tensor(config.prior_name)) if priors is not None else None,
                                max_seq_len, tmp, step, tokenizer, htp_arch, prefill_buckets)
        output = recipe.export(context)
        step("writing manifest and tokenizer")
        if priors is not None:
            priors.save(tmp / PRIORS_NAME)
        manifest = Manifest(
            target=target, model=info, selection=config, quant=quant, max_seq_len=max_seq_len,
            kv=KVLayout.of(model.config, output.kv_storage, output.kv_layout),
            tokenizer=TokenizerInfo.save(tokenizer, tmp, eos_token_ids(model, tokenizer)),
            files=output.files or dict(TARGET_FILES[target]), graphs=output.graphs, runtime=output.runtime,
            priors=None if priors is None else {"file": PRIORS_NAME, "tokens": priors.tokens, "corpus": priors.corpus},
        )
        manifest.record_checksums(tmp)
        manifest.write(tmp)
    return manifest
