"""Golden data for the Android demo's JVM engine (android_demo/core), written by the Python side.

Exports a tiny model to ONNX with int4 weights (the quantised path a phone runs) and records what
`glass-export run` does on fixed prompts: token ids, kept indices, first logits, greedy tokens and
text, and every manifest field as Python reads it. scripts/test.sh then runs the JVM tests
(mvn -f android_demo/core/pom.xml test), which must reproduce them. Nothing here is committed: the
directory is android_demo/build/golden (git-ignored).
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np

from glass_export.artifact import load_manifest
from glass_export.export import export_artifact
from glass_export.generation import generate
from glass_export.quantization import QuantScheme
from glass_export.runtime import artifact_tokenizer, open_artifact
from glass_export.selection import SelectionConfig

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("GLASS_GOLDEN_DIR", ROOT / "android_demo" / "build" / "golden"))
PROMPTS = ["Write a short poem about the sea.", "Explain why the sky is blue, café ☕ included.", "Hi"]
NEW_TOKENS = 16


def flat_fields(manifest) -> dict:
    """The manifest as one flat map, named as in glass.json (Manifest.fields() in Java)."""
    data = manifest.to_json()
    out = {"tool_version": data["tool_version"], "target": data["target"], "max_seq_len": data["max_seq_len"],
           "files": data["files"], "runtime.native_library": data["runtime"].get("native_library")}
    for section in ("model", "selection", "kv_cache"):
        for key, value in data[section].items():
            if key not in ("layout", "storage"):
                out[f"{section}.{key}"] = value
    for key in ("weights", "bits", "group_size", "accuracy_level"):
        out[f"quantization.{key}"] = data["quantization"].get(key)
    for key in ("bos_token_id", "eos_token_ids", "add_bos"):
        out[f"tokenizer.{key}"] = data["tokenizer"][key]
    return out


def test_write_golden_for_the_jvm_engine(example_dir, tmp_path):
    artifact = tmp_path / "artifact"
    export_artifact(example_dir / "model", None, SelectionConfig("griffin", 0.5), "onnx", artifact, max_seq_len=96,
                    quant=QuantScheme("int4"))
    backend = open_artifact(artifact)
    tokenizer = artifact_tokenizer(artifact, backend.manifest)
    records = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        result = generate(backend, ids, NEW_TOKENS, keep_logits=True)  # no EOS stop: compare all steps
        assert len(result.tokens) == NEW_TOKENS and result.indices.shape == (2, 128)
        assert np.all(np.diff(result.indices, axis=1) > 0)  # ascending, distinct
        records.append({
            "prompt": prompt,
            "ids": ids,
            "tokens": result.tokens,
            "text": tokenizer.decode(result.tokens, skip_special_tokens=True),
            "indices": result.indices.tolist(),
            "first_logits": result.step_logits[0].tolist(),
        })
    fields = flat_fields(load_manifest(artifact))
    assert fields["quantization.weights"] == "int4" and fields["selection.k"] == 128
    if GOLDEN.exists():
        shutil.rmtree(GOLDEN)
    GOLDEN.mkdir(parents=True)
    shutil.copytree(artifact, GOLDEN / "artifact")
    (GOLDEN / "golden.json").write_text(json.dumps({"new_tokens": NEW_TOKENS, "records": records,
                                                    "manifest_fields": fields}, indent=1))
