"""A constructed top-k boundary tie, for verify's selection check on both runtimes.

Layer 0 of a tiny Llama gets an FFN whose neurons all share one gate row g and one up row u up to a
factor, so every prompt ranks them the same way: k - 1 strong neurons (4 u), then neurons a = k - 1
and b = k with rows u and u (1 - DELTA), then weak ones (u / 4). Eager PyTorch keeps a. The exported
artifact's copy of b's up row is then nudged to u (1 + DELTA), as another reduction order could make
it: the artifact keeps b instead. Their local scores are 2 DELTA apart (relative), far inside fp32
reduction noise over a prompt, so verify must call it a tie, pass, and check decode on the artifact's
own kept set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glass_export.artifact import load_manifest
from glass_export.example import build_model

DELTA = 1e-5
K = 128  # of m = 256 at rho 0.5
A, B = K - 1, K


def save_near_tie_model(root: Path, tokenizer) -> Path:
    model = build_model("llama", seed=5, vocab_size=len(tokenizer))
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        gate, up = mlp.gate_proj.weight, mlp.up_proj.weight
        gate.copy_(gate[0].expand_as(gate))
        row = up[0].clone()
        factors = torch.full((up.shape[0],), 0.25)
        factors[:A] = 4.0
        factors[A], factors[B] = 1.0, 1.0 - DELTA
        up.copy_(factors[:, None] * row)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


def nudge_b_in_artifact(model_dir: Path, artifact: Path) -> None:
    """Rewrite b's up row in the artifact's weights (found by its bytes) as u (1 + DELTA), and re-record
    the manifest's checksums."""
    from glass_export.models import load_model

    up = load_model(model_dir).model.layers[0].mlp.up_proj.weight.detach().numpy()
    row, nudged = up[B], (up[A] * np.float32(1.0 + DELTA)).astype(np.float32)
    manifest = load_manifest(artifact)
    name = manifest.files.get("weights") or manifest.files["program"]
    path = artifact / name
    data = path.read_bytes()
    assert data.count(row.tobytes()) == 1, "b's up row must appear exactly once in the artifact"
    path.write_bytes(data.replace(row.tobytes(), nudged.tobytes()))
    manifest.record_checksums(artifact)
    manifest.write(artifact)
