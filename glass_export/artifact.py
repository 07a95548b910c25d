"""The artifact directory and its manifest, glass.json: what every target writes and every reader reads.

One typed, versioned `Manifest` describes an artifact of any target: the model it came from, the
selection (method, density, lambda, k), the weight scheme, the sequence limit, the KV cache, the
tokenizer, its files with their sizes and sha256, and the target's own details (`runtime`).
The exporters build it, `run`, `verify`, `eval` and the CLI read it, and the Android core
(android_demo/core, `Manifest.java`) mirrors it field for field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import GlassExportError
from .models import ModelInfo
from .quantization import QuantScheme
from .selection import SelectionConfig

MANIFEST_NAME = "glass.json"
FORMAT = "glass-export-artifact"
FORMAT_VERSION = 3
PRIORS_NAME = "priors.safetensors"
TARGET_FILES = {
    "onnx": {"prefill": "prefill.onnx", "decode": "decode.onnx", "weights": "model.onnx.data"},
    "executorch": {"program": "model.pte"},
    # and prefill.T.qdq.onnx per prompt bucket T (export.qnn_export)
    "qnn": {"select": "select.onnx", "decode": "decode.qdq.onnx", "weights": "model.qdq.onnx.data",
            "activation_ranges": "activation_ranges.json"},
}
CHECKSUM_CHUNK = 1 << 20


def kv_names(num_layers: int, prefix: str) -> list[str]:
    """ONNX Runtime GenAI's names: past_key_values.N.key / present.N.key ..."""
    names = []
    for layer in range(num_layers):
        names += [f"{prefix}.{layer}.key", f"{prefix}.{layer}.value"]
    return names


KV_HEADS_FIRST = "[batch=1, kv_heads, seq, head_dim]"
KV_SEQ_FIRST = "[batch=1, seq, kv_heads, head_dim]"


@dataclass(frozen=True)
class KVLayout:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    storage: str  # how the cache travels between the graphs
    layout: str = KV_HEADS_FIRST

    @classmethod
    def of(cls, config, storage: str, layout: str = KV_HEADS_FIRST) -> "KVLayout":
        heads = config.num_attention_heads
        return cls(config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads,
                   getattr(config, "head_dim", None) or config.hidden_size // heads, storage, layout)

    @property
    def past_names(self) -> list[str]:
        return kv_names(self.num_layers, "past_key_values")

    @property
    def present_names(self) -> list[str]:
        return kv_names(self.num_layers, "present")

    def to_dict(self) -> dict:
        return {"num_layers": self.num_layers, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "layout": self.layout, "storage": self.storage,
                "past_names": self.past_names, "present_names": self.present_names}


@dataclass(frozen=True)
class TokenizerInfo:
    files: list[str]
    bos_token_id: int | None
    eos_token_ids: list[int]
    add_bos: bool

    @classmethod
    def save(cls, tokenizer, directory: Path, eos_ids: set[int]) -> "TokenizerInfo":
        """Copy the tokenizer into directory and describe it."""
        tokenizer.save_pretrained(directory)
        files = sorted(p.name for p in directory.iterdir() if p.name.startswith(("tokenizer", "special_tokens", "chat_template")))
        bos = tokenizer.bos_token_id
        add_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        return cls(files, bos, sorted(eos_ids), bool(add_bos))

    def to_dict(self) -> dict:
        return {"files": self.files, "bos_token_id": self.bos_token_id, "eos_token_ids": self.eos_token_ids,
                "add_bos": self.add_bos}


@dataclass
class Manifest:
    target: str
    model: ModelInfo
    selection: SelectionConfig
    quant: QuantScheme
    max_seq_len: int
    kv: KVLayout
    tokenizer: TokenizerInfo
    files: dict[str, str]  # role -> file name
    graphs: dict  # what each graph / method takes and returns, for people
    runtime: dict  # the target's details: custom ops, native library, sizes
    priors: dict | None = None  # {"file", "tokens", "corpus"} when the method uses a prior
    checksums: dict = field(default_factory=dict)  # file name -> {"bytes", "sha256"}
    tool_version: str = __version__

    @property
    def m(self) -> int:
        return self.model.intermediate_size

    @property
    def k(self) -> int:
        return self.selection.keep_count(self.m)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def native_library(self) -> str | None:
        return self.runtime.get("native_library")

    @property
    def weights_description(self) -> str:
        if self.target == "qnn":  # the recipe quantises its graphs itself (runtime.quantization)
            return "QDQ (uint8 / uint16 weights, uint16 activations)"
        return self.quant.describe()

    def describe(self) -> str:
        return f"{self.target}, {self.selection.describe()}, k={self.k}/{self.m}, {self.weights_description}"

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool": "glass-export",
            "tool_version": self.tool_version,
            "target": self.target,
            "model": self.model.to_dict(),
            "selection": self.selection.to_dict(self.m),
            "quantization": self.quant.to_dict(),
            "max_seq_len": self.max_seq_len,
            "kv_cache": self.kv.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "files": self.files,
            "checksums": self.checksums,
            "graphs": self.graphs,
            "priors": self.priors,
            "runtime": self.runtime,
        }

    @classmethod
    def from_json(cls, data: dict, path: Path) -> "Manifest":
        """Read and check a manifest; any missing or inconsistent field is a clear error."""
        fix = "re-export the artifact"
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise GlassExportError(f"{path} is not a glass-export manifest", fix)
        if data.get("format_version") != FORMAT_VERSION:
            raise GlassExportError(
                f"{path} has manifest version {data.get('format_version')}, this glass-export reads {FORMAT_VERSION}",
                f"re-export the artifact with glass-export {__version__}")
        try:
            model = ModelInfo(**data["model"])
            selection = SelectionConfig.from_dict(data["selection"])
            kv = data["kv_cache"]
            tok = data["tokenizer"]
            manifest = cls(
                target=data["target"],
                model=model,
                selection=selection,
                quant=QuantScheme.from_dict(data["quantization"]),
                max_seq_len=int(data["max_seq_len"]),
                kv=KVLayout(int(kv["num_layers"]), int(kv["num_kv_heads"]), int(kv["head_dim"]), str(kv["storage"]),
                            str(kv["layout"])),
                tokenizer=TokenizerInfo(list(tok["files"]), tok["bos_token_id"], [int(t) for t in tok["eos_token_ids"]],
                                        bool(tok["add_bos"])),
                files=dict(data["files"]),
                graphs=dict(data["graphs"]),
                runtime=dict(data["runtime"]),
                priors=data.get("priors"),
                checksums=dict(data.get("checksums") or {}),
                tool_version=str(data.get("tool_version", "?")),
            )
        except GlassExportError as exc:
            raise GlassExportError(f"{path} is inconsistent: {exc.problem}", fix) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise GlassExportError(f"{path} lacks or garbles a field ({type(exc).__name__}: {exc})", fix) from exc
        # Values derived from others must agree with them: a hand-edited manifest is refused.
        recorded = data["selection"]
        for key, want in (("k", manifest.k), ("m", manifest.m), ("sparse_decode", selection.sparse_decode)):
            if recorded.get(key) != want:
                raise GlassExportError(f"{path} says selection.{key} = {recorded.get(key)}, but method, density and the "
                                       f"model's sizes give {want}", fix)
        if manifest.target not in TARGET_FILES:
            raise GlassExportError(f"{path} has target {manifest.target!r}; this glass-export reads "
                                   f"{', '.join(TARGET_FILES)}", fix)
        if kv["num_layers"] != model.num_layers or kv["past_names"] != manifest.kv.past_names:
            raise GlassExportError(f"{path} has a KV cache description that does not match the model", fix)
        return manifest

    def check_files(self, directory: Path, hash_files: bool = False) -> None:
        """Every listed file is there with its recorded size (and sha256 when hash_files)."""
        for role, name in self.files.items():
            if not (directory / name).is_file():
                raise GlassExportError(f"artifact {directory} is missing {name} ({role})", "re-export the artifact")
        for name, record in self.checksums.items():
            path = directory / name
            if not path.is_file():
                raise GlassExportError(f"artifact {directory} is missing {name}", "re-export the artifact")
            size = path.stat().st_size
            if size != record["bytes"]:
                raise GlassExportError(f"{path} has {size} bytes, the manifest recorded {record['bytes']}: the file "
                                       "was changed or cut short", "re-export the artifact")
            if hash_files and file_sha256(path) != record["sha256"]:
                raise GlassExportError(f"{path} does not match the sha256 its manifest recorded",
                                       "re-export the artifact")

    def record_checksums(self, directory: Path) -> None:
        names = sorted(set(self.files.values()) | set(self.tokenizer.files) | ({self.priors["file"]} if self.priors else set()))
        self.checksums = {name: {"bytes": (directory / name).stat().st_size, "sha256": file_sha256(directory / name)}
                          for name in names}

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_NAME).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHECKSUM_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(directory: str | Path, hash_files: bool = False) -> Manifest:
    directory = Path(directory)
    if not directory.is_dir():
        raise GlassExportError(f"artifact directory {directory} does not exist", "pass the --out of `glass-export export`")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise GlassExportError(f"{directory} has no {MANIFEST_NAME}", "pass a directory written by `glass-export export`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise GlassExportError(f"{path} is not UTF-8 text (byte {exc.start})", "re-export the artifact") from exc
    except json.JSONDecodeError as exc:
        raise GlassExportError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})", "re-export the artifact") from exc
    manifest = Manifest.from_json(data, path)
    manifest.check_files(directory, hash_files)
    return manifest
