"""Reading the user's text files: UTF-8 text and JSONL, with clear errors for damaged ones."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import GlassExportError

JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_text(path: Path, what: str) -> str:
    """The whole file as UTF-8 text; a missing or non-UTF-8 file is a clear error naming it."""
    path = Path(path)
    if not path.is_file():
        raise GlassExportError(f"{what} {path} does not exist", f"pass an existing {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise GlassExportError(f"{what} {path} is not UTF-8 text (line {line}, byte {exc.start})",
                               "convert the file to UTF-8 (e.g. iconv -t UTF-8)") from exc
    except OSError as exc:
        raise GlassExportError(f"cannot read {what} {path}: {exc.strerror}") from exc


def jsonl_records(path: Path, what: str):
    """Yield (line number, parsed JSON value) for each non-blank line; a bad line is a clear error."""
    for line_no, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise GlassExportError(f"{path}:{line_no} is not valid JSON ({exc.msg})", "fix or remove the line") from exc
