"""`glass-export verify`: an exported artifact against eager PyTorch on the same prompts.

Per prompt, in two parts that cannot mask each other:

1. Prefill and selection: logits and local scores against the eager reference (the artifact's own
   quantisation scheme, quantization.quantize_model), and the kept sets. Sets that differ are
   classified: a *tie* when every swapped neuron's local score is within the measured score noise
   (twice the largest artifact-vs-eager local-score difference of its layer, which float reduction
   order or an int8 rounding step explains) of a neuron on the other side; else a *mismatch*.
2. Decode: the eager reference decodes with the artifact's own kept set and is fed the artifact's own
   tokens, so the decode graph is checked at every step whatever the selection did, and one step's
   near-tie cannot derail the comparison of the next ones: logits within atol at every step, and
   every artifact token the reference's greedy choice, or a near-tie (the reference scores it within
   that step's logit difference of its best).

A prompt passes with prefill and decode within atol, a selection identical or differing by ties
only, and greedy tokens identical or near-ties. Tolerances: fp32 and float-activation schemes
agree to float rounding (default atol 1e-4); int8 activations (accuracy level 4) round each
block's values to 1/127 of its largest, and a value that float reduction order puts on the other
side of a rounding boundary moves one step, which moves the logits by ~1e-3-1e-2 on ONNX Runtime
(blocks of group-size values): those artifacts are verified at atol 5e-2 by default. ExecuTorch's
XNNPACK quantises the non-FFN activations per token (one scale per whole row, so one step is
coarser) and moved the tiny test models' logits by up to 7e-2: atol 1e-1 there. A layout or scale
bug moves them by ~1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .eager import GlassModel
from .errors import GlassExportError
from .generation import generate
from .models import load_model, model_info
from .priors import load_priors
from .runtime import artifact_tokenizer, open_artifact

SELECTION_VERDICTS = ("identical", "ties only", "mismatch")
DEFAULT_ATOL = {"exact": 1e-4, "int8 activations": 5e-2, "int8 activations per token": 1e-1}


def default_atol(quant, target: str) -> float:
    if not quant.int8_activations:
        return DEFAULT_ATOL["exact"]
    return DEFAULT_ATOL["int8 activations per token" if target == "executorch" else "int8 activations"]


@dataclass
class PromptReport:
    prompt: str
    prompt_tokens: int
    prefill_max_abs_diff: float
    local_scores_max_abs_diff: float
    selection: str  # one of SELECTION_VERDICTS
    indices_differing: int  # kept neurons in one set but not the other, over all layers
    swaps: list[dict] = field(default_factory=list)  # per differing layer: neurons, score gap, noise
    step_max_abs_diff: list[float] = field(default_factory=list)  # per decode step (the artifact's tokens fed to both)
    tokens_compared: int = 0
    tokens_expected: int = 0
    near_ties: list[int] = field(default_factory=list)  # steps where the artifact chose a reference near-tie
    first_token_mismatch: int | None = None  # first step whose token is neither the greedy choice nor a near-tie
    passed: bool = False


def classify_selection(got: np.ndarray, want: np.ndarray, local_got: np.ndarray, local_want: np.ndarray):
    """(verdict, differing count, per-layer swap records) for kept sets [layers, k]."""
    if got.shape != want.shape:
        return "mismatch", -1, [{"error": f"shape {got.shape} vs {want.shape}"}]
    swaps, verdict, differing = [], "identical", 0
    for layer, (a, b) in enumerate(zip(got, want)):
        only_artifact = sorted(set(a.tolist()) - set(b.tolist()))
        only_eager = sorted(set(b.tolist()) - set(a.tolist()))
        if not only_artifact:
            continue
        differing += len(only_artifact)
        scores = local_want[layer].astype(np.float64)
        noise = 2.0 * float(np.abs(local_got[layer] - local_want[layer]).max()) + 1e-6 * float(np.abs(scores).max())
        gaps = [min(abs(scores[i] - scores[j]) for j in only_eager) for i in only_artifact]
        gaps += [min(abs(scores[j] - scores[i]) for i in only_artifact) for j in only_eager]
        tie = max(gaps) <= noise
        swaps.append({"layer": layer, "artifact_only": only_artifact, "eager_only": only_eager,
                      "max_score_gap": max(gaps), "score_noise": noise, "tie": tie})
        verdict = "mismatch" if not tie or verdict == "mismatch" else "ties only"
    return verdict, differing, swaps


def compare_decode(report: PromptReport, got, reference: np.ndarray, eager: GlassModel) -> None:
    """Feed the artifact's tokens to the eager reference (prefilled; reference = its last prefill
    logits) and compare each step."""
    for step, token in enumerate(got.tokens):
        diff = float(np.abs(got.step_logits[step] - reference).max())
        report.step_max_abs_diff.append(diff)
        report.tokens_compared = step + 1
        best = int(np.argmax(reference))
        if token != best:
            if reference[best] - reference[token] <= 2 * diff:
                report.near_ties.append(step)
            elif report.first_token_mismatch is None:
                report.first_token_mismatch = step
        if step + 1 < len(got.tokens):
            reference = eager.decode(token)


def verify_artifact(artifact: Path, model_dir: Path, prompts: list[str], steps: int, atol: float | None,
                    use_native: bool = True, progress=None) -> dict:
    """atol None: the scheme's default (DEFAULT_ATOL)."""
    backend = open_artifact(artifact, use_native=use_native, hash_files=True)
    manifest = backend.manifest
    model = load_model(model_dir)
    info = model_info(model)
    if info.fingerprint != manifest.model.fingerprint:
        raise GlassExportError(
            f"artifact {artifact} was exported from another model (fingerprint {manifest.model.fingerprint}, "
            f"{model_dir} has {info.fingerprint})",
            "pass the --model the artifact was exported from",
        )
    atol = default_atol(manifest.quant, manifest.target) if atol is None else atol
    priors = load_priors(Path(artifact) / manifest.priors["file"]) if manifest.priors else None
    eager = GlassModel(model, manifest.selection, priors, manifest.quant, info=info, target=manifest.target)
    tokenizer = artifact_tokenizer(Path(artifact), manifest)
    reports = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        if len(ids) > manifest.max_seq_len:
            raise GlassExportError(f"the prompt {prompt[:40]!r} has {len(ids)} tokens, more than the artifact's "
                                   f"max_seq_len {manifest.max_seq_len}", "use shorter prompts")
        expected = min(steps, manifest.max_seq_len - len(ids) + 1)  # what fits in the artifact's cache
        got = generate(backend, ids, expected, keep_logits=True)
        want = eager.prefill(ids)
        eager.use_indices(got.indices)  # decode parity on the artifact's own kept set
        verdict, differing, swaps = classify_selection(got.indices, want.indices, got.local_scores, want.local_scores)
        report = PromptReport(
            prompt=prompt, prompt_tokens=len(ids),
            prefill_max_abs_diff=float(np.abs(got.prefill_logits - want.logits).max()),
            local_scores_max_abs_diff=float(np.abs(got.local_scores - want.local_scores).max()),
            selection=verdict, indices_differing=differing, swaps=swaps, tokens_expected=expected,
        )
        compare_decode(report, got, want.logits[-1], eager)
        if report.tokens_compared != expected and report.first_token_mismatch is None:
            report.first_token_mismatch = report.tokens_compared
        report.passed = (
            report.prefill_max_abs_diff <= atol
            and verdict != "mismatch"
            and report.first_token_mismatch is None
            and max(report.step_max_abs_diff, default=0.0) <= atol
        )
        reports.append(report)
        if progress is not None:
            progress()
    backend.close()
    return {
        "artifact": str(artifact),
        "target": manifest.target,
        "runs_on": backend.description,
        "selection": manifest.selection.to_dict(manifest.m),
        "quantization": manifest.quant.to_dict(),
        "steps": steps,
        "atol": atol,
        "passed": all(r.passed for r in reports),
        "selection_summary": {v: sum(r.selection == v for r in reports) for v in SELECTION_VERDICTS},
        "prompts": [asdict(r) for r in reports],
    }
