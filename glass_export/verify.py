"""`glass-export verify`: an exported artifact against eager PyTorch on the same prompts.

Per prompt, in two parts that cannot mask each other:

1. Prefill and selection: logits and local scores against the eager reference (the artifact's own
   quantisation scheme, quantization.quantize_model), and the kept sets. Sets that differ are
   classified *ties only* when the artifact's set is exactly what the method selects from the
   artifact's own local scores and those scores agree with eager's (so only neurons at the top-k
   boundary whose scores float reduction order or an int8 rounding step reorders have moved), else
   *mismatch* (a wrong index, a selection bug).
2. Decode: the eager reference decodes with the artifact's own kept set and is fed the artifact's own
   tokens, so the decode graph is checked at every step whatever the selection did, and one step's
   near-tie cannot derail the comparison of the next ones; every artifact token must be the
   reference's greedy choice, or a near-tie (the reference scores it within twice that step's largest
   logit difference of its best).

How close is close depends on the scheme:

- *exact* (fp32, float activations): logits and local scores within `atol` (default 1e-4) at the
  prefill and every decode step; the two agree to float rounding.
- *distribution* (int8 activations, accuracy level 4): every quantised matmul rounds its input to
  int8 steps of 1/127 of each block's largest value (the decode's down coefficients too), and a value
  that float reduction order puts on the other side of a rounding boundary moves one step. In a deep
  model such steps spread: on SmolLM2-135M (30 layers) an int4 artifact and its reference differ by
  0.5-1.8 in the logits while their next-token distributions stay within KL 0.003-0.025 on average
  (measured; the int4 weights themselves move the model by 0.3 from fp32, a layout or scale bug by
  more than 1). So each prompt's mean KL(reference || artifact) over its prefill positions and decode
  steps must stay within `kl` (default 0.05), no single position beyond 10 x `kl`, and the local
  scores within 10 % of each layer's largest.
  The qnn target's QDQ graphs (uint8 projection weights per channel, uint16 activations, on the HTP)
  are held to the same checks with `kl` 0.1 by default (QDQ_KL): the reference is the float model, so
  this is the quantisation's own error. Measured 0.0001-0.0007 on the tiny test models (decode only)
  and 0.04-0.05 on SmolLM2-135M (30 layers; logits up to 3-4 apart on a step), where per-tensor
  projection weights gave 0.09-0.15 and unwidened activation ranges up to 0.9 on a tiny model: such
  bugs land above the bound. Its prefill returns the logits of the prompt's last token only, so
  that is the prefill position compared. Its local scores are the HTP's (uint16 squares summed over
  the prompt), within 25 % of each layer's largest (QDQ_LOCAL_RTOL): measured 2-3 % on the tiny
  models and 17 % on SmolLM2 (a 6-token prompt), where 2 % of the kept neurons swapped at the top-k
  boundary; the kept set must still be what the selection makes of the artifact's own scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .eager import GlassModel
from .errors import GlassExportError
from .generation import generate
from .models import load_model, model_info
from .runtime import artifact_tokenizer, open_artifact

SELECTION_VERDICTS = ("identical", "ties only", "mismatch")
EXACT_ATOL = 1e-4
INT8_KL = 0.05  # a prompt's mean KL(reference || artifact); one position may reach KL_PEAK x this
QDQ_KL = 0.1  # the same for a qnn artifact's QDQ graphs (module docstring)
KL_PEAK = 10.0
INT8_LOCAL_RTOL = 0.1  # local scores, relative to each layer's largest
QDQ_LOCAL_RTOL = 0.25  # the same for qnn's uint16 local scores (module docstring)


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact must come to its eager reference (module docstring)."""

    mode: str  # "exact" | "distribution"
    atol: float | None = None  # exact: logits and local scores
    kl: float | None = None  # distribution: mean KL a prompt
    local_rtol: float | None = None  # distribution: local scores, relative to each layer's largest

    @classmethod
    def for_artifact(cls, manifest, atol: float | None = None, kl: float | None = None) -> "Tolerance":
        if manifest.target == "qnn":
            return cls("distribution", kl=QDQ_KL if kl is None else kl, local_rtol=QDQ_LOCAL_RTOL)
        if manifest.quant.int8_activations:
            return cls("distribution", kl=INT8_KL if kl is None else kl, local_rtol=INT8_LOCAL_RTOL)
        return cls("exact", atol=EXACT_ATOL if atol is None else atol)

    def local_bounds(self, local_want: np.ndarray) -> np.ndarray:
        """Per layer, how far a local score may be from eager's."""
        if self.mode == "distribution":
            return self.local_rtol * np.abs(local_want).max(axis=-1)
        return np.full(local_want.shape[0], self.atol)

    def describe(self) -> str:
        if self.mode == "exact":
            return f"atol {self.atol:g}"
        return f"mean KL <= {self.kl:g}"


@dataclass
class PromptReport:
    prompt: str
    prompt_tokens: int
    prefill_max_abs_diff: float
    local_scores_max_abs_diff: float
    local_scores_max_rel_diff: float  # per layer relative to its largest eager score, the worst layer
    selection: str  # one of SELECTION_VERDICTS
    indices_differing: int  # kept neurons in one set but not the other, over all layers
    swaps: list[dict] = field(default_factory=list)  # per differing layer: swapped pairs, their places and gaps
    step_max_abs_diff: list[float] = field(default_factory=list)  # per decode step (the artifact's tokens fed to both)
    kl_mean: float = 0.0  # KL(reference || artifact) of the next-token distributions, over prefill positions and steps
    kl_max: float = 0.0
    tokens_compared: int = 0
    tokens_expected: int = 0
    near_ties: list[int] = field(default_factory=list)  # steps where the artifact chose a reference near-tie
    first_token_mismatch: int | None = None  # first step whose token is neither the greedy choice nor a near-tie
    passed: bool = False


def classify_selection(got: np.ndarray, want: np.ndarray, own: np.ndarray, local_got: np.ndarray,
                       local_want: np.ndarray, bounds: np.ndarray, positions: np.ndarray | None = None):
    """(verdict, differing count, per-layer swap records) for kept sets [layers, k]: the artifact's (got),
    eager's (want), and what the method selects from the artifact's own local scores (own). A layer's
    swap is a tie when the artifact kept exactly what its own local scores select and the swapped
    neurons' scores agree with eager's within the layer's bound; anything else is a mismatch.

    Each record pairs the swapped neurons (the artifact's extra ones with eager's, both in eager's order)
    and gives, by eager's local scores, each pair's place in the method's order (positions [layers, m],
    0 = kept first; a boundary swap is k - 1 against k) and its raw local-score gap relative to the
    larger score."""
    if got.shape != want.shape:
        return "mismatch", -1, [{"error": f"shape {got.shape} vs {want.shape}"}]
    swaps, verdict, differing = [], "identical", 0
    for layer, (a, b) in enumerate(zip(got, want)):
        only_artifact = set(a.tolist()) - set(b.tolist())
        only_eager = set(b.tolist()) - set(a.tolist())
        if not only_artifact:
            continue
        differing += len(only_artifact)
        swapped = sorted(only_artifact | only_eager)
        close = float(np.abs(local_got[layer][swapped] - local_want[layer][swapped]).max()) <= float(bounds[layer])
        tie = bool(np.array_equal(np.sort(a), np.sort(own[layer]))) and close
        scores = local_want[layer].astype(np.float64)
        order = (lambda i: int(positions[layer][i])) if positions is not None else (lambda i: i)
        pairs = []
        for extra, dropped in zip(sorted(only_artifact, key=order), sorted(only_eager, key=order, reverse=True)):
            gap = abs(scores[extra] - scores[dropped]) / max(abs(scores[extra]), abs(scores[dropped]), 1e-30)
            pairs.append({"artifact_kept": extra, "eager_kept": dropped,
                          "places": None if positions is None else [order(extra), order(dropped)],
                          "relative_score_gap": float(gap)})
        swaps.append({"layer": layer, "pairs": pairs, "tie": tie})
        verdict = "mismatch" if not tie or verdict == "mismatch" else "ties only"
    return verdict, differing, swaps


def kl_divergence(reference: np.ndarray, artifact: np.ndarray) -> np.ndarray:
    """KL(softmax(reference) || softmax(artifact)) along the last axis, in float64."""
    p = torch.log_softmax(torch.as_tensor(reference, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.as_tensor(artifact, dtype=torch.float64), -1)
    return (p.exp() * (p - q)).sum(-1).numpy()


def compare_decode(report: PromptReport, got, reference: np.ndarray, eager: GlassModel) -> list[float]:
    """Feed the artifact's tokens to the eager reference (prefilled; reference = its last prefill
    logits) and compare each step; returns the steps' KLs."""
    kls = []
    for step, token in enumerate(got.tokens):
        diff = float(np.abs(got.step_logits[step] - reference).max())
        report.step_max_abs_diff.append(diff)
        kls.append(float(kl_divergence(reference, got.step_logits[step])))
        report.tokens_compared = step + 1
        best = int(np.argmax(reference))
        if token != best:
            if reference[best] - reference[token] <= 2 * diff:
                report.near_ties.append(step)
            elif report.first_token_mismatch is None:
                report.first_token_mismatch = step
        if step + 1 < len(got.tokens):
            reference = eager.decode(token)
    return kls


def verify_artifact(artifact: Path, model_dir: Path, prompts: list[str], steps: int, atol: float | None = None,
                    use_native: bool = True, progress=None, kl: float | None = None) -> dict:
    """atol / kl None: the artifact's default (Tolerance.for_artifact)."""
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
    tolerance = Tolerance.for_artifact(manifest, atol, kl)
    eager = GlassModel.for_artifact(model, manifest, artifact, info)
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
        own = eager.select(torch.from_numpy(got.local_scores)).numpy()
        positions = eager.fused_positions(torch.from_numpy(want.local_scores))
        bounds = tolerance.local_bounds(want.local_scores)
        verdict, differing, swaps = classify_selection(got.indices, want.indices, own, got.local_scores,
                                                       want.local_scores, bounds, positions)
        local_diff = np.abs(got.local_scores - want.local_scores).max(axis=-1)
        want_prefill = want.logits[-len(got.prefill_logits):]  # the positions the artifact returns (qnn: the last)
        report = PromptReport(
            prompt=prompt, prompt_tokens=len(ids),
            prefill_max_abs_diff=float(np.abs(got.prefill_logits - want_prefill).max()),
            local_scores_max_abs_diff=float(local_diff.max()),
            local_scores_max_rel_diff=float((local_diff / np.maximum(np.abs(want.local_scores).max(axis=-1), 1e-30)).max()),
            selection=verdict, indices_differing=differing, swaps=swaps, tokens_expected=expected,
        )
        step_kls = compare_decode(report, got, want.logits[-1], eager)
        kls = [*kl_divergence(want_prefill, got.prefill_logits).tolist(), *step_kls]
        report.kl_mean, report.kl_max = float(np.mean(kls)), float(np.max(kls))
        if report.tokens_compared != expected and report.first_token_mismatch is None:
            report.first_token_mismatch = report.tokens_compared
        steps_close = max(report.step_max_abs_diff, default=0.0) <= tolerance.atol if tolerance.mode == "exact" else (
            report.kl_mean <= tolerance.kl and report.kl_max <= KL_PEAK * tolerance.kl)
        prefill_close = tolerance.mode == "distribution" or report.prefill_max_abs_diff <= tolerance.atol
        close = prefill_close and steps_close
        report.passed = (close and bool(np.all(local_diff <= bounds)) and verdict != "mismatch"
                         and report.first_token_mismatch is None)
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
        "tolerance": asdict(tolerance) | {"describe": tolerance.describe()},
        "passed": all(r.passed for r in reports),
        "selection_summary": {v: sum(r.selection == v for r in reports) for v in SELECTION_VERDICTS},
        "prompts": [asdict(r) for r in reports],
    }
