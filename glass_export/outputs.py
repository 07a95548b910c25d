"""Every file or directory a command writes goes through an OutputPlan.

An OutputPlan checks the path before any work starts (a bad --out must not surface after hours of
calibration) and publishes the output atomically at the end:

- it refuses an --out that is, contains or lies inside one of the command's inputs, the current
  directory or the home directory, whatever --force says;
- --force replaces only an earlier output of the same kind (each directory output carries a
  marker file naming its kind; a priors file carries its metadata), never anything else;
- the output is written under a temporary name beside the target and renamed into place; a rename
  that finds the target written meanwhile by another process fails instead of replacing it;
- temporary entries left by a killed run (their process is gone) are removed by the next run
  that writes the same path.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

from . import __version__
from .errors import GlassExportError

MARKER = ".glass-export.json"  # in every directory glass-export writes: {"kind": ..., "tool_version": ...}
KINDS = ("artifact", "model", "example", "eval", "priors")
TEMP_TAG = ".glass-tmp-"
OLD_TAG = ".glass-old-"


def output_kind(path: Path) -> str | None:
    """What kind of glass-export output path is, or None if it is not one."""
    if path.is_dir():
        marker = path / MARKER
        if marker.is_file():
            try:
                kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
            except (OSError, ValueError, AttributeError):
                return None
            return kind if kind in KINDS else None
        return None
    if path.is_file() and path.suffix == ".safetensors":
        from .priors import METADATA_KEY

        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return "priors" if METADATA_KEY in (handle.metadata() or {}) else None
        except Exception:  # not a safetensors file at all
            return None
    return None


def _contains(parent: Path, child: Path) -> bool:
    return parent == child or parent in child.parents


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputPlan:
    def __init__(self, path: Path, kind: str, force: bool = False, inputs: list[Path] = (), option: str = "--out"):
        """option: the command-line option that names path, for the messages."""
        if kind not in KINDS:
            raise ValueError(kind)
        self.option = option
        self.path = Path(path)
        self.kind = kind
        self.force = force
        self.is_file = kind == "priors"
        self._check(list(inputs))
        self._clean_stale()

    # --- checks before any work -----------------------------------------------------------------

    def _check(self, inputs: list[Path]) -> None:
        target = self.path.resolve()
        fix_path = f"choose a new path for {self.option}"
        protected = {"the current directory": Path.cwd().resolve(), "your home directory": Path.home().resolve()}
        for what, place in protected.items():
            if _contains(target, place):
                raise GlassExportError(f"{self.option} {self.path} is {what} or contains it; writing there would "
                                       "replace it", fix_path)
        for source in inputs:
            source = Path(source).resolve()
            if _contains(target, source) or _contains(source, target):
                raise GlassExportError(f"{self.option} {self.path} overlaps the input {source}; writing there would "
                                       "destroy it", fix_path)
        if self.path.exists() or self.path.is_symlink():
            self._check_existing()
        parent = target.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise GlassExportError(f"cannot write {self.path}: {parent} is not a writable directory", fix_path)

    def _check_existing(self) -> None:
        path = self.path
        if path.is_symlink():
            raise GlassExportError(f"{self.option} {path} is a symbolic link", "pass the real path, or a new one")
        if self.is_file:
            if path.is_dir():
                raise GlassExportError(f"{self.option} {path} is a directory", "pass a file path for the priors")
        elif not path.is_dir():
            raise GlassExportError(f"{self.option} {path} is a file, not a directory",
                                   f"choose a new path for {self.option}")
        elif not any(path.iterdir()):
            return  # an empty directory: nothing to lose
        existing = output_kind(path)
        if not self.force:
            raise GlassExportError(f"{'file' if self.is_file else 'output directory'} {path} already exists"
                                   + ("" if self.is_file else " and is not empty"),
                                   "choose a new path or pass --force to replace it")
        if existing != self.kind:
            what = f"a glass-export {existing}" if existing else "not something glass-export wrote"
            raise GlassExportError(f"--force will not replace {path}: it is {what}, not a glass-export {self.kind}",
                                   f"choose a new path for {self.option}, or remove it yourself if you mean to")

    def _temp_entries(self):
        parent = self.path.parent
        if not parent.is_dir():
            return []
        prefixes = (f".{self.path.name}{TEMP_TAG}", f".{self.path.name}{OLD_TAG}")
        return [p for p in parent.iterdir() if p.name.startswith(prefixes)]

    def _clean_stale(self) -> None:
        """Remove temporary entries of this path whose writer process is gone (a killed run)."""
        for entry in self._temp_entries():
            try:
                pid = int(entry.name.rsplit("-", 2)[-2])
            except (ValueError, IndexError):
                continue
            if not _process_alive(pid):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    def _temp_path(self, tag: str) -> Path:
        return self.path.parent / f".{self.path.name}{tag}{os.getpid()}-{secrets.token_hex(4)}"

    # --- writing --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def directory(self):
        """Yield a temporary directory; on success it becomes self.path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temp_path(TEMP_TAG)
        tmp.mkdir()
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"kind": self.kind, "tool_version": __version__}) + "\n",
                                      encoding="utf-8")
            self._publish(tmp)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def file(self):
        """Yield a temporary file path; on success it becomes self.path."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temp_path(TEMP_TAG)
        try:
            yield tmp
            os.chmod(tmp, 0o644)
            if self.force and self.path.exists():
                os.replace(tmp, self.path)
            else:
                try:
                    os.link(tmp, self.path)  # fails if the target appeared meanwhile
                except FileExistsError as exc:
                    raise self._raced() from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _raced(self) -> GlassExportError:
        return GlassExportError(f"{self.path} was written by another process while this one ran; "
                                "nothing of this run was written",
                                f"run again with another {self.option}, or with --force")

    def _publish(self, tmp: Path) -> None:
        old = None
        if self.path.exists() and any(self.path.iterdir()):
            if not self.force or output_kind(self.path) != self.kind:
                raise self._raced()
            old = self._temp_path(OLD_TAG)
            os.rename(self.path, old)
        try:
            os.rename(tmp, self.path)  # onto a missing or empty directory only
        except OSError as exc:
            if old is not None:
                os.rename(old, self.path)
            raise self._raced() from exc
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
