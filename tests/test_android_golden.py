"""Golden data for the Android demo (android_demo/core and android_demo/app), written by the Python side.

Exports a tiny model to ONNX with int4 weights (the quantised path a phone runs), its dense twin
(artifact-dense, the app's switch), and to ExecuTorch (fp32, executorch/; int4, executorch-int4/), and
records what `glass-export run` does on fixed prompts: token ids, kept indices, first logits, greedy
tokens and text, every manifest field as Python reads it, and the app's run (EOS stops it) on both
ONNX artifacts. scripts/test.sh then runs the JVM tests (mvn -f android_demo/pom.xml test), which must
reproduce them. Nothing here is committed: the directory is android_demo/build/golden (git-ignored).
"""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

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
APP_TOKENS = 24  # the app's max_new_tokens in android_demo/app's tests (EOS stops it, as in the app)
ET_EXPORT_BUDGET_S = 120  # each .pte export took 35-49 s on 2 busy cores; the suite must not creep past this


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


def golden_records(backend, tokenizer) -> list[dict]:
    """Every prompt, NEW_TOKENS greedy steps without an EOS stop: what the JVM backends must reproduce."""
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
    return records


def app_run(artifact: Path) -> dict:
    """What the app shows for PROMPTS[0] with APP_TOKENS: greedy, stopped by EOS like `glass-export run`."""
    backend = open_artifact(artifact)
    tokenizer = artifact_tokenizer(artifact, backend.manifest)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    result = generate(backend, ids, APP_TOKENS, eos_ids=set(backend.manifest.tokenizer.eos_token_ids))
    backend.close()
    return {"tokens": result.tokens, "text": tokenizer.decode(result.tokens, skip_special_tokens=True)}


def test_write_golden_for_the_jvm_engine(example_dir, tmp_path):
    artifact, dense = tmp_path / "artifact", tmp_path / "artifact-dense"
    export_artifact(example_dir / "model", None, SelectionConfig("griffin", 0.5), "onnx", artifact, max_seq_len=96,
                    quant=QuantScheme("int4"))
    export_artifact(example_dir / "model", None, SelectionConfig("dense"), "onnx", dense, max_seq_len=96,
                    quant=QuantScheme("int4"))
    backend = open_artifact(artifact)
    tokenizer = artifact_tokenizer(artifact, backend.manifest)
    records = golden_records(backend, tokenizer)
    fields = flat_fields(load_manifest(artifact))
    assert fields["quantization.weights"] == "int4" and fields["selection.k"] == 128
    if GOLDEN.exists():
        shutil.rmtree(GOLDEN)
    GOLDEN.mkdir(parents=True)
    shutil.copytree(artifact, GOLDEN / "artifact")
    shutil.copytree(dense, GOLDEN / "artifact-dense")
    app = {"prompt": PROMPTS[0], "max_new_tokens": APP_TOKENS, "sparse": app_run(artifact), "dense": app_run(dense)}
    assert load_manifest(dense).selection.sparse_decode is False
    (GOLDEN / "golden.json").write_text(json.dumps({"new_tokens": NEW_TOKENS, "records": records,
                                                    "manifest_fields": fields, "app": app}, indent=1))


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_write_executorch_golden(example_dir, tmp_path, weights):
    """The same records for a .pte, for the JNI backend: fp32 (executorch/) and int4 (executorch-int4/: the
    quantised glass kernels, the decode's glass::residual_norm_gather_ffn_q among them, as a phone runs them)."""
    name = "executorch" if weights == "fp32" else f"executorch-{weights}"
    artifact = tmp_path / name
    start = time.perf_counter()
    export_artifact(example_dir / "model", None, SelectionConfig("griffin", 0.5), "executorch", artifact,
                    max_seq_len=96, quant=QuantScheme(weights))
    seconds = time.perf_counter() - start
    assert seconds < ET_EXPORT_BUDGET_S, f"the golden {weights} .pte export took {seconds:.0f} s"
    backend = open_artifact(artifact)
    records = golden_records(backend, artifact_tokenizer(artifact, backend.manifest))
    custom_ops = load_manifest(artifact).runtime["custom_ops"]
    backend.close()
    assert ("glass::gather_ffn.out" if weights == "fp32" else "glass::residual_norm_gather_ffn_q.out") in custom_ops
    write_golden(name, artifact, records, custom_ops=custom_ops, export_seconds=seconds)


def write_golden(name: str, artifact: Path, records: list[dict], **extra) -> None:
    """GOLDEN/<name> (a copy of the artifact) and GOLDEN/<name>.json (the records and `extra`), replacing both."""
    out = GOLDEN / name
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(artifact, out)
    (GOLDEN / f"{name}.json").write_text(json.dumps({"new_tokens": NEW_TOKENS, "records": records, **extra}, indent=1))


QNN_BUCKETS = (8, 48)  # "Hi" runs in the small bucket, the other prompts in the large one


def logits_step(artifact: Path, manifest) -> float:
    """The largest quantisation step of the qnn graphs' logits (the scale of their last DequantizeLinear)."""
    import onnx
    from onnx import numpy_helper

    steps = []
    for role in ["decode", *(f"prefill.{b}" for b in manifest.runtime["prefill_buckets"])]:
        graph = onnx.load(str(artifact / manifest.files[role]), load_external_data=False).graph
        (node,) = [n for n in graph.node if "logits" in n.output]
        assert node.op_type == "DequantizeLinear"
        steps.append(float(numpy_helper.to_array(next(i for i in graph.initializer if i.name == node.input[1]))))
    return max(steps)


def test_write_qnn_golden(example_dir, tmp_path):
    """The same records for a qnn artifact (griffin: local scores through select.onnx), run with its QDQ graphs
    on the CPU provider: the Android engine's QnnBackend must reproduce them on the JVM jar, which has no QNN EP
    (on a phone the same code runs them on the HTP)."""
    from glass_export.runtime.qnn_backend import QnnBackend

    artifact = tmp_path / "qnn"
    export_artifact(example_dir / "model", None, SelectionConfig("griffin", 0.5), "qnn", artifact, max_seq_len=96,
                    prefill_buckets=QNN_BUCKETS)
    manifest = load_manifest(artifact)
    backend = QnnBackend.open(artifact, manifest, on_cpu=True)
    tokenizer = artifact_tokenizer(artifact, manifest)
    records = golden_records(backend, tokenizer)
    assert sorted(backend.prefill_sessions) == list(QNN_BUCKETS)  # both buckets were used
    backend.close()
    write_golden("qnn", artifact, records, logits_step=logits_step(artifact, manifest))
