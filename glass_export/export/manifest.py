"""glass.json: the manifest that makes an artifact explain itself.

One format for every target. Readers (the Python runners, the Android core)
check `format` and `format_version` before anything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import GlassExportError

MANIFEST_NAME = "glass.json"
FORMAT = "glass-export-artifact"
FORMAT_VERSION = 1
PRIORS_NAME = "priors.safetensors"

Step = Callable[[str], None]  # progress callback: the export step starting now


def kv_names(num_layers: int, prefix: str) -> list[str]:
    """ONNX Runtime GenAI's names: past_key_values.N.key / present.N.key ..."""
    names = []
    for layer in range(num_layers):
        names += [f"{prefix}.{layer}.key", f"{prefix}.{layer}.value"]
    return names


def kv_layout(model) -> dict:
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "num_layers": config.num_hidden_layers,
        "num_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "layout": "[batch=1, kv_heads, seq, head_dim]",
        "past_names": kv_names(config.num_hidden_layers, "past_key_values"),
        "present_names": kv_names(config.num_hidden_layers, "present"),
    }


def build_manifest(*, target: str, info, config, k: int, max_seq_len: int, kv: dict, graphs: dict, files: dict,
                   tokenizer: dict, priors: dict | None, extra: dict | None = None) -> dict:
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool": "glass-export",
        "tool_version": __version__,
        "target": target,
        "model": info.to_dict(),
        "selection": {
            "method": config.method,
            "density": config.density if config.method != "dense" else 1.0,
            "lambda": config.effective_lambda,
            "seed": config.seed,
            "k": k,
            "m": info.intermediate_size,
            "sparse_decode": config.method != "dense",
        },
        "dtype": "float32",
        "index_dtype": "int64",
        "max_seq_len": max_seq_len,
        "kv_cache": kv,
        "graphs": graphs,
        "files": files,
        "tokenizer": tokenizer,
        "priors": priors,
    }
    manifest.update(extra or {})
    return manifest


def write_manifest(directory: Path, manifest: dict) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def load_manifest(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise GlassExportError(f"artifact directory {directory} does not exist", "pass the --out of `glass-export export`")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise GlassExportError(f"{directory} has no {MANIFEST_NAME}", "pass a directory written by `glass-export export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GlassExportError(f"{path} is not valid JSON ({exc.msg})", "re-export the artifact") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GlassExportError(f"{path} is not a glass-export manifest", "re-export the artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GlassExportError(
            f"{path} has manifest version {manifest.get('format_version')}, this glass-export reads {FORMAT_VERSION}",
            f"re-export the artifact with glass-export {__version__}",
        )
    for role, name in manifest.get("files", {}).items():
        if not (directory / name).is_file():
            raise GlassExportError(f"artifact {directory} is missing {name} ({role})", "re-export the artifact")
    return manifest


def finish_manifest(out: Path, parts: dict, tokenizer, eos_ids: set[int]) -> dict:
    """Copy the tokenizer beside the graphs and write glass.json."""
    tokenizer.save_pretrained(out)
    tok_files = sorted(p.name for p in out.iterdir() if p.name.startswith(("tokenizer", "special_tokens")))
    tok = {
        "files": tok_files,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_ids": sorted(eos_ids),
        "add_bos": bool(tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]) if tokenizer.bos_token_id is not None else False,
    }
    manifest = build_manifest(tokenizer=tok, **parts)
    write_manifest(out, manifest)
    return manifest
