"""The qnn target: a static, stock-op, QDQ decode graph on ONNX Runtime's QNN HTP backend (simulated on
x86-64 by onnxruntime-qnn's libQnnHtp.so), the prefill on the CPU.

Tolerances: the float32 static decode graph against the CPU target's decode graph, logits within 1e-4
absolute (measured ~2e-6) and this step's key / value within 1e-5; the QDQ artifact against eager
PyTorch (glass_export.verify, "quantised decode"): prefill logits and local scores within 1e-4, kept
sets identical, the decode steps' mean KL(reference || artifact) within verify's 0.1 and here within
0.01 (measured 0.0001-0.0007 on these random tiny models), every greedy token the reference's choice
or a near-tie.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from glass_export.artifact import load_manifest
from glass_export.errors import GlassExportError
from glass_export.example import FAMILIES
from glass_export.export import export_artifact
from glass_export.export.onnx_graph import DecoderGraph, GraphPlan, WeightStore
from glass_export.export.qnn_graph import StaticDecodeGraph
from glass_export.models.decoder import decoder_spec
from glass_export.quantization import QuantScheme
from glass_export.runtime import open_artifact
from glass_export.runtime.qnn_backend import QNN_EP, StaticKVCache
from glass_export.selection import SelectionConfig
from glass_export.verify import verify_artifact

from test_onnx_export import assert_matches_eager, save_family

STEPS = 16
MAX_SEQ_LEN = 48
PROMPTS = ["The river ran past the old mill", "A lighthouse keeper wrote"]


def _session(graph: DecoderGraph, weights: WeightStore, path):
    model = graph.g.model("g", list(graph.functions.values()), lambda n: onnx.numpy_helper.from_array(weights.arrays[n], n))
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("dense", [False, True], ids=["glass", "dense-twin"])
def test_static_decode_graph_matches_the_cpu_decode_graph(family_model, dense, tmp_path):
    """Same step, same cache, same kept set: the stock-op graph computes what the fused-op graph does."""
    family, model = family_model
    spec = decoder_spec(model)
    config = SelectionConfig("dense") if dense else SelectionConfig("griffin", 0.5)
    plan = GraphPlan(spec, config, None, QuantScheme(), MAX_SEQ_LEN)
    weights = WeightStore()
    fused = _session(DecoderGraph(plan, weights, "decode").build_decode(), weights, tmp_path / "fused.onnx")
    static = _session(StaticDecodeGraph(plan, weights).build_decode(), weights, tmp_path / "static.onnx")
    rng = np.random.default_rng(0)
    layers, position = len(spec.layers), 9
    indices = np.sort(np.stack([rng.choice(plan.m, plan.k, replace=False) for _ in range(layers)]), axis=1)
    cache = StaticKVCache(load_kv(model), MAX_SEQ_LEN)
    for array in cache.arrays:
        array[:, :, :position] = rng.standard_normal(array[:, :, :position].shape)
    feeds = cache.decode_feeds(11, position, indices.astype(np.int64))
    want = fused.run(None, {n: np.array(v, copy=True) for n, v in feeds.items() if n != "attention_mask"})
    got = static.run(None, feeds)
    assert np.abs(got[0] - want[0]).max() <= 1e-4, family
    for new, written in zip(got[1:], want[1:]):  # this step's key / value, where the fused graph wrote them
        assert new.shape[2] == 1
        assert np.abs(new[:, :, 0] - written[:, :, position]).max() <= 1e-5, family


def load_kv(model):
    from glass_export.artifact import KVLayout

    return KVLayout.of(model.config, "")


@pytest.mark.parametrize("family", FAMILIES)
def test_qnn_artifact_verifies_on_the_htp_without_cpu_fallback(family, tokenizer, tmp_path_factory):
    root = save_family(tmp_path_factory, tokenizer, family)
    manifest = export_artifact(root / "model", root / "priors.safetensors", SelectionConfig("i-glass", 0.5, 0.5), "qnn",
                               root / "art", max_seq_len=MAX_SEQ_LEN)
    partition = manifest.runtime["partition"]["decode"]
    # One QNN partition holding every node, nothing on the CPU (creation fails otherwise: fallback disabled).
    assert partition["ran_on"] == {QNN_EP: 1} and partition["cpu_fallback"] == "disabled", partition
    decode = onnx.load(str(root / "art" / manifest.files["decode"]), load_external_data=False)
    ops = {node.op_type for node in decode.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Gather", "MatMul"} <= ops
    assert all(node.domain in ("", "ai.onnx") for node in decode.graph.node), "stock operators only"
    assert manifest.runtime["calibration"]["decode_steps"] > 0
    ranges = json.loads((root / "art" / manifest.files["activation_ranges"]).read_text())["data"]
    assert "logits" in ranges and manifest.files["activation_ranges"] in manifest.checksums
    report = verify_artifact(root / "art", root / "model", PROMPTS, STEPS)
    assert report["tolerance"]["mode"] == "quantised decode"
    assert report["passed"], json.dumps(report["prompts"], indent=1)[:4000]
    assert_matches_eager(report, STEPS)
    for row in report["prompts"]:
        assert row["prefill_max_abs_diff"] <= 1e-4 and row["selection"] == "identical", row
        assert row["kl_mean"] <= 0.01, row


def test_qnn_dense_twin_and_cli(tokenizer, tmp_path_factory):
    from click.testing import CliRunner

    from glass_export.cli import main

    root = save_family(tmp_path_factory, tokenizer, "llama")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    result = CliRunner().invoke(main, ["export", "--model", str(root / "model"), "--dense", "--target", "qnn",
                                       "--max-seq-len", str(MAX_SEQ_LEN), "--out", str(root / "twin")])
    assert result.exit_code == 0, result.output
    assert "QDQ decode weights" in result.output
    manifest = load_manifest(root / "twin")
    assert manifest.target == "qnn" and not manifest.selection.sparse_decode
    report = verify_artifact(root / "twin", root / "model", PROMPTS[:1], STEPS)
    assert report["passed"], report["prompts"]
    run = CliRunner().invoke(main, ["run", "--artifact", str(root / "twin"), "--prompt", PROMPTS[0],
                                    "--max-new-tokens", "4"])
    assert run.exit_code == 0 and "decode on the QNN HTP backend" in run.output, run.output
    assert "LIBNATIVE" not in run.output  # the QNN libraries' set-up message stays out of the user's output
    evaluation = CliRunner().invoke(main, ["eval", "--model", str(root / "model"), "--artifact", str(root / "twin"),
                                           "--prompts", str(root / "prompts.txt"), "--max-new-tokens", "8",
                                           "--min-new-tokens", "4", "--out", str(root / "eval")])
    assert evaluation.exit_code == 0, evaluation.output
    (run_result,) = json.loads((root / "eval" / "results.json").read_text())["runs"]
    # the dense twin's KL to the fp32 dense model is the QDQ decode's own error: small, not zero
    assert 0 < run_result["kl"] < 0.05, run_result


def test_context_binary_for_a_named_htp_is_what_runs(tokenizer, tmp_path_factory):
    """--htp-arch writes the decode graph precompiled (one EPContext node) and the runner loads that."""
    root = save_family(tmp_path_factory, tokenizer, "qwen3")
    manifest = export_artifact(root / "model", None, SelectionConfig("griffin", 0.5), "qnn", root / "art",
                               max_seq_len=MAX_SEQ_LEN, htp_arch=75)
    context = onnx.load(str(root / "art" / manifest.files["decode_context"]), load_external_data=False)
    assert [node.op_type for node in context.graph.node] == ["EPContext"]
    assert manifest.runtime["htp_arch"] == 75 and manifest.files["decode_context"] in manifest.checksums
    report = verify_artifact(root / "art", root / "model", PROMPTS[:1], STEPS)
    assert report["passed"], report["prompts"]
    assert report["runs_on"].endswith("(context binary for HTP v75)")
    with pytest.raises(GlassExportError, match="--htp-arch compiles for Qualcomm's HTP"):
        export_artifact(root / "model", None, SelectionConfig("griffin", 0.5), "onnx", root / "never", htp_arch=75)
    assert not (root / "never").exists()


def test_qnn_artifact_without_the_execution_provider_is_a_clear_error(tokenizer, tmp_path_factory, monkeypatch):
    root = save_family(tmp_path_factory, tokenizer, "llama")
    export_artifact(root / "model", None, SelectionConfig("griffin", 0.5), "qnn", root / "art", max_seq_len=MAX_SEQ_LEN)
    import glass_export.runtime.qnn_backend as qnn_backend

    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)  # import fails as if not installed
    monkeypatch.setattr(qnn_backend, "_registered", False)
    with pytest.raises(GlassExportError) as error:
        open_artifact(root / "art")
    assert "onnxruntime-qnn" in error.value.problem and "pip install" in error.value.fix
