"""`glass-export export`: a two-graph GLASS artifact for ONNX Runtime or ExecuTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import GlassExportError
from ..io_utils import atomic_directory
from ..selection import SelectionConfig

TARGETS = ("onnx", "executorch")


def export_artifact(
    model_dir: Path,
    priors_path: Path | None,
    config: SelectionConfig,
    target: str,
    out: Path,
    max_seq_len: int = 512,
    force: bool = False,
    step: Callable[[str], None] = lambda _: None,
) -> dict:
    """Load, export and write an artifact directory atomically; returns its manifest."""
    from ..eager import eos_token_ids
    from ..models import load_model, load_tokenizer, model_info
    from ..priors import load_priors
    from .manifest import finish_manifest
    from .onnx_export import export_onnx

    if target not in TARGETS:
        raise GlassExportError(f"unknown target {target!r}", f"choose one of: {', '.join(TARGETS)}")
    if max_seq_len < 2:
        raise GlassExportError(f"--max-seq-len must be at least 2, got {max_seq_len}")
    step("loading model")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    priors = None
    if config.prior_name is not None:
        if priors_path is None:
            raise GlassExportError(
                f"method {config.method} needs global priors", "pass --priors from `glass-export calibrate`"
            )
        priors = load_priors(priors_path)
        priors.check_matches(model_info(model))
    window = getattr(model.config, "sliding_window", None)
    if window is not None and getattr(model.config, "layer_types", None) and max_seq_len > window:
        raise GlassExportError(
            f"--max-seq-len {max_seq_len} exceeds the sliding window ({window}) of this {model.config.model_type} model",
            f"export with --max-seq-len {window} or less",
        )
    with atomic_directory(Path(out), force=force) as tmp:
        if target == "onnx":
            parts = export_onnx(model, config, priors, tmp, max_seq_len, step)
        else:
            from .executorch_export import export_executorch

            parts = export_executorch(model, config, priors, tmp, max_seq_len, step)
        step("writing manifest and tokenizer")
        manifest = finish_manifest(tmp, parts, tokenizer, eos_token_ids(model, tokenizer))
    return manifest
