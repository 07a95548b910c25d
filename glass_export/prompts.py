"""Prompt files: one prompt a line (text) or JSONL with a `prompt` (or `instruction`) field."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import GlassExportError
from .io_utils import JSONL_SUFFIXES, jsonl_records, read_text


def builtin_prompts() -> list[str]:
    text = resources.files("glass_export.data").joinpath("prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_prompts(path: str | Path | None) -> list[str]:
    """The user's prompts, or the built-in short instructions when path is None."""
    if path is None:
        return builtin_prompts()
    path = Path(path)
    prompts = []
    if path.suffix.lower() in JSONL_SUFFIXES:
        for line_no, record in jsonl_records(path, "prompts file"):
            text = record.get("prompt", record.get("instruction")) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise GlassExportError(f"{path}:{line_no} has no string field 'prompt' or 'instruction'")
            prompts.append(text)
    else:
        prompts = read_text(path, "prompts file").splitlines()
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
    try:
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True)
    except Exception as exc:  # jinja2's sandbox refusals and template errors
        raise GlassExportError(f"the tokenizer's chat template failed: {type(exc).__name__}: {exc}",
                               "fix chat_template in the tokenizer files, or drop --chat") from exc
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
