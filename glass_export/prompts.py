"""Prompt files: one prompt a line (text) or JSONL with a `prompt` (or `instruction`) field.

A JSONL record may also carry `"split": "tune"` or `"split": "report"`: `glass-export tune` chooses
lambda on the tune half and reports on the held-out report half, and `eval --split` selects a half.
The package ships two sets: 8 short prompts (`prompts.txt`, verify's default) and 64 instructions
of varied tasks split 32 / 32 (`instructions.jsonl`, the default of eval and tune).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import GlassExportError
from .io_utils import JSONL_SUFFIXES, jsonl_records, read_text

SPLITS = ("tune", "report")  # the halves a record can belong to
ALL = "all"
SPLIT_CHOICES = (*SPLITS, ALL)
SHIPPED_INSTRUCTIONS = "instructions.jsonl"


def builtin_prompts() -> list[str]:
    text = resources.files("glass_export.data").joinpath("prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def shipped_instructions_path() -> Path:
    return Path(str(resources.files("glass_export.data").joinpath(SHIPPED_INSTRUCTIONS)))


def read_prompts(path: str | Path | None) -> list[str]:
    """The user's prompts, or the 8 built-in short prompts when path is None."""
    if path is None:
        return builtin_prompts()
    return [text for text, _split in _records(Path(path))]


def default_split(path: str | Path | None) -> str:
    """eval's --split when none is given: the held-out report half of the shipped set, all of a user's file."""
    return "report" if path is None else ALL


def read_prompt_set(path: str | Path | None, split: str | None = None) -> list[str]:
    """The prompts of one split (tune / report / all) of a file, or of the shipped instructions when path is
    None. A split other than 'all' needs a JSONL file whose every record carries a `split` field."""
    split = split or default_split(path)
    if split not in SPLIT_CHOICES:
        raise GlassExportError(f"unknown prompt split {split!r}", f"choose one of: {', '.join(SPLIT_CHOICES)}")
    source = shipped_instructions_path() if path is None else Path(path)
    records = _records(source)
    if split == ALL:
        return [text for text, _ in records]
    fix = (f'add "split": "tune" or "report" to every JSONL record of {source}, or pass --split all '
           "(tune needs both halves)")
    if all(s is None for _, s in records):
        raise GlassExportError(f"prompts file {source} marks no prompt with a split, so it has no {split!r} half",
                               fix)
    unmarked = [i for i, (_, s) in enumerate(records, 1) if s is None]
    if unmarked:
        raise GlassExportError(f"prompt {unmarked[0]} of {source} has no split field ({len(unmarked)} such prompts)", fix)
    chosen = [text for text, s in records if s == split]
    if not chosen:
        raise GlassExportError(f"prompts file {source} has no prompt in the {split!r} split", fix)
    return chosen


def describe_prompt_set(path: str | Path | None, split: str | None, count: int) -> dict:
    return {"file": SHIPPED_INSTRUCTIONS + " (shipped)" if path is None else str(path),
            "split": split or default_split(path), "prompts": count}


def _records(path: Path) -> list[tuple[str, str | None]]:
    """(text, split or None) of every non-blank prompt of a file; an empty file is an error."""
    records = []
    if path.suffix.lower() in JSONL_SUFFIXES:
        for line_no, record in jsonl_records(path, "prompts file"):
            text = record.get("prompt", record.get("instruction")) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise GlassExportError(f"{path}:{line_no} has no string field 'prompt' or 'instruction'")
            split = record.get("split")
            if split is not None and split not in SPLITS:
                raise GlassExportError(f"{path}:{line_no} has split {split!r}",
                                       f"use one of: {', '.join(SPLITS)} (or leave the field out)")
            if text.strip():
                records.append((text, split))
    else:
        records = [(line, None) for line in read_text(path, "prompts file").splitlines() if line.strip()]
    if not records:
        raise GlassExportError(f"prompts file {path} holds no prompt", "write one prompt a line")
    return records


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
