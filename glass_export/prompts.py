"""Prompt files: one prompt a line (text) or JSONL with a `prompt` (or `instruction`) field."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import GlassExportError
from .io_utils import JSONL_SUFFIXES, jsonl_records


def builtin_prompts() -> list[str]:
    text = resources.files("glass_export.data").joinpath("prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_prompts(path: str | Path | None) -> list[str]:
    """The user's prompts, or the built-in short instructions when path is None."""
    if path is None:
        return builtin_prompts()
    path = Path(path)
    if not path.is_file():
        raise GlassExportError(f"prompts file {path} does not exist", "pass a text file (one prompt a line) or JSONL")
    prompts = []
    if path.suffix.lower() in JSONL_SUFFIXES:
        for line_no, record in jsonl_records(path):
            text = record.get("prompt", record.get("instruction")) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise GlassExportError(f"{path}:{line_no} has no string field 'prompt' or 'instruction'")
            prompts.append(text)
    else:
        prompts = path.read_text(encoding="utf-8").splitlines()
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise GlassExportError(f"prompts file {path} holds no prompt", "write one prompt a line")
    return prompts


def encode_prompt(tokenizer, text: str, chat: bool = False) -> list[int]:
    """Token ids of a prompt; with chat=True it goes through the tokenizer's chat template as one user turn
    (what instruction-tuned models expect)."""
    if not chat:
        return tokenizer(text)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise GlassExportError("--chat was given but the tokenizer has no chat template", "drop --chat for a base model")
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
