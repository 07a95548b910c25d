"""Output helpers: nothing half-written ever appears under the user's path."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


JSONL_SUFFIXES = (".jsonl", ".ndjson")


def jsonl_records(path: Path):
    """Yield (line number, parsed JSON value) for each non-blank line; a bad line is a clear error."""
    import json

    from .errors import GlassExportError

    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise GlassExportError(f"{path}:{line_no} is not valid JSON ({exc.msg})", "fix or remove the line") from exc


@contextlib.contextmanager
def atomic_output(path: Path):
    """Yield a temporary file path beside `path`; rename it over `path` only on success."""
    path = Path(path)
    if path.is_dir():
        from .errors import GlassExportError

        raise GlassExportError(f"{path} is a directory", "pass a file path for the output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_directory(path: Path, force: bool = False):
    """Yield a temporary directory beside `path`; it replaces `path` only on success."""
    from .errors import GlassExportError

    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        if not force:
            raise GlassExportError(f"output directory {path} is not empty", "choose a new path or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
