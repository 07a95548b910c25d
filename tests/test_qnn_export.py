"""The qnn target: static, stock-op, QDQ prefill and decode graphs on ONNX Runtime's QNN HTP backend
(simulated on x86-64 by onnxruntime-qnn's libQnnHtp.so), the selection on the CPU.

Tolerances: the float32 static graphs against the CPU target's graphs: decode logits within 1e-4
absolute (measured ~2e-6) and this step's key / value within 1e-5; prefill last-token logits within
1e-4, local scores within 1e-5 (measured ~3e-7), the prompt's keys / values within 1e-5, kept sets
identical. The QDQ artifact against eager PyTorch (glass_export.verify, "distribution" with qnn's KL
bound): each prompt's mean KL(reference || artifact) over its last prefill position and decode steps
within verify's 0.1 and here within 0.01 (measured 0.0005-0.001 on these random tiny models), local
scores within verify's 25 % of each layer's largest and here 10 % (measured 2-3 %), kept sets
identical or boundary ties,
every greedy token the reference's choice or a near-tie.
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
from glass_export.export.qnn_graph import StaticGraph
from glass_export.models.decoder import decoder_spec
from glass_export.quantization import QuantScheme
from glass_export.runtime import open_artifact
from glass_export.runtime.qnn_backend import QNN_EP, StaticKVCache, prefill_feeds
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
    static = _session(StaticGraph(plan, weights, "decode").build_decode(), weights, tmp_path / "static.onnx")
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


def test_static_prefill_and_selection_graphs_match_the_cpu_prefill_graph(family_model, tmp_path):
    """A padded prompt in a bucket: the last token's logits, the local scores (padding excluded), the prompt's
    keys / values and, from the scores, the CPU selection graph's kept set are the fused prefill's."""
    from glass_export.calibration import compute_priors
    from glass_export.selection import ranks

    family, model = family_model
    spec = decoder_spec(model)
    priors = compute_priors(model, np.random.default_rng(1).integers(4, 200, (2, 16)).tolist())
    config = SelectionConfig("i-glass", 0.5, 0.5)
    plan = GraphPlan(spec, config, ranks(priors.tensor(config.prior_name)), QuantScheme(), MAX_SEQ_LEN)
    weights = WeightStore()
    fused = _session(DecoderGraph(plan, weights, "prefill").build_prefill(), weights, tmp_path / "fused.onnx")
    bucket, length = 16, 11
    static = _session(StaticGraph(plan, weights, "prefill").build_prefill(bucket), weights, tmp_path / "static.onnx")
    select = _session(StaticGraph(plan, weights, "select").build_selection(), weights, tmp_path / "select.onnx")
    ids = np.random.default_rng(0).integers(4, 200, length).tolist()
    cache = StaticKVCache(load_kv(model), MAX_SEQ_LEN)
    want = dict(zip((o.name for o in fused.get_outputs()),
                    fused.run(None, {"input_ids": np.array([ids]), **dict(zip(cache.past_names, cache.arrays))})))
    got = dict(zip((o.name for o in static.get_outputs()), static.run(None, prefill_feeds(ids, bucket))))
    assert np.abs(got["logits"][0, 0] - want["logits"][0, -1]).max() <= 1e-4, family
    local = np.stack([got[f"glass_local_scores.{layer}"] for layer in range(len(spec.layers))])
    assert np.abs(local - want["glass_local_scores"]).max() <= 1e-5, family
    (indices,) = select.run(None, {"glass_local_scores": local})
    assert np.array_equal(indices, want["glass_indices"]), family
    for name in cache.present_names:
        assert np.abs(got[name][:, :, :length] - want[name][:, :, :length]).max() <= 1e-5, (family, name)


def load_kv(model):
    from glass_export.artifact import KVLayout

    return KVLayout.of(model.config, "")


@pytest.mark.parametrize("family", FAMILIES)
def test_qnn_artifact_verifies_on_the_htp_without_cpu_fallback(family, tokenizer, tmp_path_factory):
    root = save_family(tmp_path_factory, tokenizer, family)
    manifest = export_artifact(root / "model", root / "priors.safetensors", SelectionConfig("i-glass", 0.5, 0.5), "qnn",
                               root / "art", max_seq_len=MAX_SEQ_LEN)
    buckets = manifest.runtime["prefill_buckets"]
    assert buckets == [MAX_SEQ_LEN - 1]  # the default buckets (64, 256), cut to what the cache leaves room for
    graphs = ["decode", *(f"prefill.{b}" for b in buckets)]
    for role in graphs:
        # One QNN partition holding every node, nothing on the CPU (creation fails otherwise: fallback disabled).
        partition = manifest.runtime["partition"][role]
        assert partition["ran_on"] == {QNN_EP: 1} and partition["cpu_fallback"] == "disabled", (role, partition)
        graph = onnx.load(str(root / "art" / manifest.files[role]), load_external_data=False)
        assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node), "stock operators only"
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {node.op_type for node in graph.graph.node}
        location = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
        assert location == {manifest.files["weights"]}, location  # one weights file for every QDQ graph
        assert manifest.runtime["calibration"]["runs"][role] > 0
    decode = onnx.load(str(root / "art" / manifest.files["decode"]), load_external_data=False)
    assert {"Gather", "MatMul"} <= {node.op_type for node in decode.graph.node}
    # shared projections are stored once: less written than the graphs reference
    assert manifest.runtime["weights_bytes"] < manifest.runtime["weights_referenced_bytes"]
    ranges = json.loads((root / "art" / manifest.files["activation_ranges"]).read_text())
    assert set(ranges) == set(graphs) and all("logits" in ranges[role]["data"] for role in graphs)
    assert manifest.files["activation_ranges"] in manifest.checksums
    report = verify_artifact(root / "art", root / "model", PROMPTS, STEPS)
    assert report["tolerance"]["mode"] == "distribution" and report["tolerance"]["kl"] == 0.1
    assert report["passed"], json.dumps(report["prompts"], indent=1)[:4000]
    assert_matches_eager(report, STEPS)
    for row in report["prompts"]:
        assert row["selection"] in ("identical", "ties only") and row["local_scores_max_rel_diff"] <= 0.1, row
        assert row["kl_mean"] <= 0.01, row


def test_qnn_dense_twin_and_cli(tokenizer, tmp_path_factory):
    from click.testing import CliRunner

    from glass_export.cli import main

    root = save_family(tmp_path_factory, tokenizer, "llama")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    result = CliRunner().invoke(main, ["export", "--model", str(root / "model"), "--dense", "--target", "qnn",
                                       "--max-seq-len", str(MAX_SEQ_LEN), "--out", str(root / "twin")])
    assert result.exit_code == 0, result.output
    assert "QDQ weights" in result.output
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


def test_prefill_buckets_and_context_binaries_for_a_named_htp(tokenizer, tmp_path_factory):
    """--prefill-buckets: a prompt runs in the smallest bucket that holds it, a longer one is a clear error;
    --htp-arch writes every QDQ graph precompiled (one EPContext node each) and the runner loads those."""
    root = save_family(tmp_path_factory, tokenizer, "qwen3")
    manifest = export_artifact(root / "model", None, SelectionConfig("griffin", 0.5), "qnn", root / "art",
                               max_seq_len=MAX_SEQ_LEN, htp_arch=75, prefill_buckets=(24, 8))
    assert manifest.runtime["prefill_buckets"] == [8, 24] and manifest.runtime["htp_arch"] == 75
    for role in ("decode", "prefill.8", "prefill.24"):
        context = onnx.load(str(root / "art" / manifest.files[f"{role}.context"]), load_external_data=False)
        assert [node.op_type for node in context.graph.node] == ["EPContext"], role
        assert manifest.files[f"{role}.context"] in manifest.checksums
    report = verify_artifact(root / "art", root / "model", PROMPTS, STEPS)  # 16 and 14 tokens: bucket 24
    assert report["passed"], report["prompts"]
    assert report["runs_on"].endswith("(context binaries for HTP v75)")
    with open_artifact(root / "art") as backend:
        short = backend.prefill(tokenizer("A")["input_ids"])  # bucket 8
        assert list(backend.prefill_sessions) == [8] and short.logits.shape == (1, len(tokenizer))  # the last token's
        with pytest.raises(GlassExportError) as error:
            backend.prefill(list(range(4, 4 + 30)))
        assert "at most 24" in error.value.problem and "--prefill-buckets 8,24,30" in error.value.fix
    with pytest.raises(GlassExportError, match="--htp-arch compiles for Qualcomm's HTP"):
        export_artifact(root / "model", None, SelectionConfig("griffin", 0.5), "onnx", root / "never", htp_arch=75)
    with pytest.raises(GlassExportError, match="--prefill-buckets sizes the NPU's static prefill graphs"):
        export_artifact(root / "model", None, SelectionConfig("griffin", 0.5), "onnx", root / "never",
                        prefill_buckets=(8,))
    with pytest.raises(GlassExportError, match="a bucket must be 1 .. max_seq_len - 1"):
        export_artifact(root / "model", None, SelectionConfig("griffin", 0.5), "qnn", root / "never",
                        max_seq_len=MAX_SEQ_LEN, prefill_buckets=(8, MAX_SEQ_LEN))
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
