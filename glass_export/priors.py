"""Global priors file: per-layer A-GLASS and I-GLASS priors plus provenance.

Stored as safetensors: tensors `activation` and `impact`, each float32
`[layers, m]`, and a JSON document under the metadata key `glass_priors`. `glass-export tune`
adds a `tuning` record to that document: the lambda it chose per method and density, which
`export` and `generate` use when --lambda is not given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .errors import GlassExportError
from .models import ModelInfo

FORMAT_VERSION = 1
METADATA_KEY = "glass_priors"
PRIOR_NAMES = ("activation", "impact")


@dataclass
class Priors:
    activation: torch.Tensor  # [layers, m] mean |z_i|
    impact: torch.Tensor  # [layers, m] mean |z_i| * ||W_down[:, i]||
    model: ModelInfo
    tokens: int
    corpus: dict = field(default_factory=dict)
    tool_version: str = __version__
    tuning: dict = field(default_factory=dict)  # `glass-export tune`'s record (tuning.py); {} until tuned

    def tensor(self, name: str) -> torch.Tensor:
        if name not in PRIOR_NAMES:
            raise GlassExportError(f"unknown prior {name!r}", f"choose one of: {', '.join(PRIOR_NAMES)}")
        return getattr(self, name)

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "tool": "glass-export",
            "tool_version": self.tool_version,
            "model": self.model.to_dict(),
            "tokens": self.tokens,
            "corpus": self.corpus,
            **({"tuning": self.tuning} if self.tuning else {}),
        }

    def tuned(self, method: str, density: float) -> dict | None:
        """The tune record's entry for method (chosen lambda, its KL, ...) at the tuned density nearest to
        density (ties: the higher one), or None when the method was not tuned."""
        entries = [e for e in self.tuning.get("chosen", []) if e.get("method") == method]
        if not entries:
            return None
        return min(entries, key=lambda e: (abs(e["density"] - density), -e["density"]))

    def save(self, path: str | Path) -> None:
        """Write the file at path (callers writing for the user go through outputs.OutputPlan)."""
        from safetensors.torch import save_file

        tensors = {name: self.tensor(name).float().contiguous() for name in PRIOR_NAMES}
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(self.metadata())})

    def check_matches(self, info: ModelInfo, source: str = "priors") -> None:
        """Refuse priors computed for another model."""
        mine = self.model
        for attr in ("model_type", "num_layers", "hidden_size", "intermediate_size"):
            if getattr(mine, attr) != getattr(info, attr):
                raise GlassExportError(
                    f"{source} were computed for another model: {attr} is {getattr(mine, attr)} there, "
                    f"{getattr(info, attr)} in this model",
                    "run `glass-export calibrate` on this model",
                )
        if mine.fingerprint != info.fingerprint:
            raise GlassExportError(
                f"{source} were computed for another model (weights fingerprint {mine.fingerprint}, "
                f"this model's is {info.fingerprint})",
                "run `glass-export calibrate` on this model",
            )


def _corrupt(path: Path, why: str) -> GlassExportError:
    return GlassExportError(
        f"{path} is not a valid glass-export priors file: {why}", "re-create it with `glass-export calibrate`"
    )


def load_priors(path: str | Path) -> Priors:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GlassExportError(f"priors file {path} does not exist", "create it with `glass-export calibrate`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw_meta = (handle.metadata() or {}).get(METADATA_KEY)
            if raw_meta is None:
                raise _corrupt(path, "no glass_priors metadata")
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except GlassExportError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated / garbage files
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    try:
        meta = json.loads(raw_meta)
        version = meta["format_version"]
        info = ModelInfo(**meta["model"])
        tokens = int(meta["tokens"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _corrupt(path, f"unreadable metadata ({exc})") from exc
    if version != FORMAT_VERSION:
        raise _corrupt(path, f"format version {version}, this glass-export reads version {FORMAT_VERSION}")
    expected = (info.num_layers, info.intermediate_size)
    for name in PRIOR_NAMES:
        if name not in tensors:
            raise _corrupt(path, f"tensor {name!r} missing")
        tensor = tensors[name]
        if tuple(tensor.shape) != expected:
            raise _corrupt(path, f"tensor {name!r} has shape {tuple(tensor.shape)}, metadata says {expected}")
        if not bool(torch.isfinite(tensor).all()):
            raise _corrupt(path, f"tensor {name!r} holds NaN or infinite values")
    return Priors(
        activation=tensors["activation"],
        impact=tensors["impact"],
        model=info,
        tokens=tokens,
        corpus=meta.get("corpus", {}),
        tool_version=meta.get("tool_version", "?"),
        tuning=_tuning(path, meta.get("tuning", {})),
    )


def _tuning(path: Path, tuning) -> dict:
    """The tune record, checked enough that a command reading a lambda from it cannot crash."""
    from .selection import lambda_units

    if not isinstance(tuning, dict) or not isinstance(tuning.get("chosen", []), list):
        raise _corrupt(path, "unreadable tuning record")
    for entry in tuning.get("chosen", []):
        try:
            lambda_units(entry["lambda"])
            float(entry["density"]), str(entry["method"])
        except (GlassExportError, KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"unreadable tuning record entry {entry!r}") from exc
    return tuning


def summarize(priors: Priors) -> dict:
    """Per-layer statistics for `glass-export inspect`."""
    rows = []
    for layer in range(priors.model.num_layers):
        act, imp = priors.activation[layer], priors.impact[layer]
        top = max(1, math.floor(0.1 * act.numel()))
        rows.append(
            {
                "layer": layer,
                "activation_mean": float(act.mean()),
                "impact_mean": float(imp.mean()),
                # Share of total impact held by the top 10% of neurons: how peaked the prior is.
                "impact_top10_share": float(imp.sort(descending=True).values[:top].sum() / imp.sum().clamp_min(1e-30)),
            }
        )
    return {"metadata": priors.metadata(), "layers": rows}
