"""`glass-export verify`: an exported artifact against eager PyTorch on the same prompts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .eager import GlassModel
from .errors import GlassExportError
from .export.manifest import PRIORS_NAME
from .models import load_model, model_info
from .priors import load_priors
from .runtime import generate, open_artifact
from .selection import SelectionConfig


@dataclass
class PromptReport:
    prompt: str
    prompt_tokens: int
    prefill_max_abs_diff: float
    indices_identical: bool
    indices_differing: int  # kept neurons in one selection but not the other, over all layers
    step_max_abs_diff: list[float] = field(default_factory=list)  # per decode step, while tokens agree
    tokens_compared: int = 0
    first_token_mismatch: int | None = None
    passed: bool = False


def selection_from_manifest(manifest: dict) -> SelectionConfig:
    sel = manifest["selection"]
    lam = sel["lambda"] if sel["method"] in ("a-glass", "i-glass") else None
    return SelectionConfig(sel["method"], sel["density"], lam, sel.get("seed", 0))


def verify_artifact(artifact: Path, model_dir: Path, prompts: list[str], steps: int, atol: float,
                    use_native: bool = True, progress=None) -> dict:
    backend = open_artifact(artifact, use_native=use_native)
    manifest = backend.manifest
    model = load_model(model_dir)
    info = model_info(model)
    if info.fingerprint != manifest["model"]["fingerprint"]:
        raise GlassExportError(
            f"artifact {artifact} was exported from another model (fingerprint {manifest['model']['fingerprint']}, "
            f"{model_dir} has {info.fingerprint})",
            "pass the --model the artifact was exported from",
        )
    config = selection_from_manifest(manifest)
    priors = load_priors(Path(artifact) / PRIORS_NAME) if config.prior_name else None
    eager = GlassModel(model, config, priors)
    tokenizer = backend.tokenizer()
    reports = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        want = eager.generate(ids, steps, keep_logits=True)
        got = generate(backend, ids, steps, keep_logits=True)
        reference_indices = want.indices.numpy()
        differing = sum(
            len(set(a.tolist()) ^ set(b.tolist())) for a, b in zip(got.indices, reference_indices)
        ) // 2 if got.indices.shape == reference_indices.shape else -1
        report = PromptReport(
            prompt=prompt,
            prompt_tokens=len(ids),
            prefill_max_abs_diff=float(np.abs(got.prefill_logits - want.prefill_logits.numpy()).max()),
            indices_identical=bool(np.array_equal(got.indices, reference_indices)),
            indices_differing=differing,
        )
        for step, (a, b) in enumerate(zip(got.tokens, want.tokens)):
            report.step_max_abs_diff.append(float(np.abs(got.step_logits[step] - want.step_logits[step].numpy()).max()))
            report.tokens_compared = step + 1
            if a != b:
                report.first_token_mismatch = step
                break
        if report.first_token_mismatch is None and len(got.tokens) != len(want.tokens):
            report.first_token_mismatch = min(len(got.tokens), len(want.tokens))
        report.passed = (
            report.prefill_max_abs_diff <= atol
            and report.indices_identical
            and report.first_token_mismatch is None
            and max(report.step_max_abs_diff, default=0.0) <= atol
        )
        reports.append(report)
        if progress is not None:
            progress()
    return {
        "artifact": str(artifact),
        "target": manifest["target"],
        "op_implementation": getattr(backend, "op_implementation", "n/a"),
        "selection": manifest["selection"],
        "steps": steps,
        "atol": atol,
        "passed": all(r.passed for r in reports),
        "prompts": [asdict(r) for r in reports],
    }
