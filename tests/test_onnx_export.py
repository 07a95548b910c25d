"""Two-graph ONNX export of tiny models of every family, fp32 / int8 / int4, verified against eager PyTorch.

Tolerances (glass_export.verify): fp32 logits within 1e-4 absolute at prefill and every decode step
(measured ~3e-6); int8/int4 with int8 activations: a prompt's mean KL(reference || artifact) of the
next-token distributions within 0.05 against the scheme's eager reference (the logits agree to ~2e-6
except where float reduction order moves an activation or a down coefficient across an int8 rounding
boundary); kept sets identical or differing by ties only; every greedy token the reference's choice or
a near-tie.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from glass_export.artifact import load_manifest
from glass_export.calibration import compute_priors
from glass_export.cli import main
from glass_export.errors import GlassExportError
from glass_export.example import FAMILIES, build_model
from glass_export.export import export_artifact
from glass_export.export.onnx_graph import INLINE_LIMIT
from glass_export.generation import generate
from glass_export.models import load_model
from glass_export.prompts import builtin_prompts
from glass_export.quantization import QuantScheme
from glass_export.runtime import open_artifact
from glass_export.selection import SelectionConfig
from glass_export.verify import verify_artifact

STEPS = 32


def save_family(tmp_path_factory, tokenizer, family, seed=0, **overrides):
    """A saved tiny model of the family and its priors file."""
    root = tmp_path_factory.mktemp(family)
    model = build_model(family, seed=seed, vocab_size=len(tokenizer), **overrides)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    gen = torch.Generator().manual_seed(1)
    priors = compute_priors(model, torch.randint(4, len(tokenizer), (4, 24), generator=gen).tolist())
    priors.save(root / "priors.safetensors")
    return root


def assert_matches_eager(report, steps=STEPS):
    """Every prompt passed (tolerances in the module docstring) over all its steps."""
    for row in report["prompts"]:
        assert row["passed"] and row["selection"] != "mismatch", row
        assert row["first_token_mismatch"] is None and row["tokens_compared"] == min(steps, row["tokens_expected"]), row
        tolerance = report["tolerance"]
        if tolerance["mode"] == "exact":
            assert max(row["step_max_abs_diff"]) <= tolerance["atol"] and row["prefill_max_abs_diff"] <= tolerance["atol"], row
        else:
            assert row["kl_mean"] <= tolerance["kl"], row
    assert report["passed"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizer):
    return save_family(tmp_path_factory, tokenizer, "llama")


@pytest.fixture(scope="module")
def llama_artifact(llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "llama-i-glass"
    export_artifact(llama_dir / "model", llama_dir / "priors.safetensors", SelectionConfig("i-glass", 0.5, 0.3),
                    "onnx", out, max_seq_len=64)
    return out


@pytest.mark.parametrize("weights", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_and_scheme_exports_and_verifies(family, weights, tokenizer, tmp_path_factory):
    root = save_family(tmp_path_factory, tokenizer, family)
    out = root / f"artifact-{weights}"
    method = {"gemma": "a-glass", "phi3": "griffin", "qwen3": "static-i"}.get(family, "i-glass")
    config = SelectionConfig(method, 0.5, 0.4 if method.endswith("glass") else None)
    manifest = export_artifact(root / "model", root / "priors.safetensors", config, "onnx", out, max_seq_len=64,
                               quant=QuantScheme(weights))
    assert manifest.k == 128 and manifest.model.model_type == family and manifest.quant.weights == weights
    # Both ways the glass ops run: the native ORT kernels, and the model-local functions on a stock ORT.
    native = verify_artifact(out, root / "model", builtin_prompts()[:3], STEPS, None)
    assert_matches_eager(native)
    assert native["runs_on"].startswith("onnx, native kernels (libglass_ort_ops.so")
    fallback = verify_artifact(out, root / "model", builtin_prompts()[:3], STEPS, None, use_native=False)
    assert_matches_eager(fallback)
    assert fallback["runs_on"] == "onnx, function fallback (stock onnxruntime ops)"


def test_graphs_use_fused_ops_and_the_glass_op(llama_artifact):
    prefill = onnx.load(str(llama_artifact / "prefill.onnx"), load_external_data=False)
    decode = onnx.load(str(llama_artifact / "decode.onnx"), load_external_data=False)
    assert [i.name for i in prefill.graph.input][:3] == ["input_ids", "past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in prefill.graph.output][:5] == ["logits", "glass_local_scores", "glass_indices",
                                                            "present.0.key", "present.0.value"]
    assert [i.name for i in decode.graph.input][:5] == ["input_ids", "position_ids", "glass_indices",
                                                        "past_key_values.0.key", "past_key_values.0.value"]
    ops = [n.op_type for n in decode.graph.node]
    assert ops.count("GatherFFN") == 2 and ops.count("GroupQueryAttention") == 2  # one per layer
    assert len(decode.graph.node) <= 20 * 2  # a lean graph: ~14 nodes a layer
    assert [(f.domain, f.name) for f in decode.functions] == [("glass", "GatherFFN")]
    manifest = load_manifest(llama_artifact)
    assert manifest.runtime["custom_ops"] == ["glass.GatherFFN"] and manifest.native_library == "libglass_ort_ops.so"
    assert "tokenizer.json" in manifest.tokenizer.files and (llama_artifact / "tokenizer.json").is_file()
    assert manifest.graphs["decode"]["nodes"] == len(decode.graph.node)


def weight_bytes(model_dir) -> int:
    model = load_model(model_dir)
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(b for b in unique.values() if b >= INLINE_LIMIT)


def test_weights_are_stored_once(llama_artifact, llama_dir):
    weights = weight_bytes(llama_dir / "model")
    data = (llama_artifact / "model.onnx.data").stat().st_size
    # one copy of the weights (plus alignment padding and the rotary tables), though both graphs read them
    assert weights <= data <= weights * 1.05 + 64 * 64, (data, weights)
    manifest = load_manifest(llama_artifact)
    assert manifest.runtime["weights_bytes_referenced_by_graphs"] > 1.3 * manifest.runtime["weights_bytes"]
    for name in ("prefill.onnx", "decode.onnx"):
        graph = onnx.load(str(llama_artifact / name), load_external_data=False).graph
        assert [i.name for i in graph.initializer if len(i.raw_data) >= INLINE_LIMIT] == []
        assert {e.value for i in graph.initializer for e in i.external_data if e.key == "location"} == {"model.onnx.data"}


def test_int4_artifact_is_small_and_its_tied_table_is_stored_once(llama_dir, tmp_path):
    """The embedding lookup (GatherBlockQuantized) and the LM head (MatMulNBits) read one quantised table."""
    out = tmp_path / "int4"
    manifest = export_artifact(llama_dir / "model", None, SelectionConfig("griffin", 0.5), "onnx", out, max_seq_len=64,
                               quant=QuantScheme("int4"))
    decode = onnx.load(str(out / "decode.onnx"), load_external_data=False)
    gather = next(n for n in decode.graph.node if n.op_type == "GatherBlockQuantized")
    head = [n for n in decode.graph.node if n.op_type == "MatMulNBits"][-1]
    reshape = next(n for n in decode.graph.node if n.output[0] == gather.input[0])
    assert reshape.input[0] == head.input[1] and gather.input[2] == head.input[2]  # same codes, same scales
    assert {n.op_type for n in decode.graph.node} >= {"GatherFFNQ", "MatMulNBits", "GatherBlockQuantized"}
    ratio = manifest.runtime["weights_bytes"] / weight_bytes(llama_dir / "model")
    assert ratio <= 0.2, ratio  # 4-bit codes + a float scale per 32: 0.156 of fp32, plus the rotary tables


def test_dense_twin_is_the_stock_dense_graph(llama_dir, tmp_path):
    """The dense twin runs stock operators only (MatMulNBits for every quantised FFN matmul, W_down quantised
    along m as ONNX Runtime GenAI stores it), and verifies against its own eager reference."""
    for weights in ("fp32", "int8", "int4"):
        out = tmp_path / f"dense-{weights}"
        manifest = export_artifact(llama_dir / "model", None, SelectionConfig("dense"), "onnx", out, max_seq_len=64,
                                   quant=QuantScheme(weights))
        assert manifest.k == manifest.m and not manifest.selection.sparse_decode
        assert manifest.runtime["custom_ops"] == [] and manifest.native_library is None
        for name in ("prefill.onnx", "decode.onnx"):
            graph = onnx.load(str(out / name), load_external_data=False)
            assert {n.domain for n in graph.graph.node} <= {"", "com.microsoft"} and not graph.functions, name
            if weights != "fp32":  # qkv, o, gate_up and down of each of the 2 layers, and the LM head
                assert [n.op_type for n in graph.graph.node].count("MatMulNBits") == 2 * 4 + 1, name
        report = verify_artifact(out, llama_dir / "model", builtin_prompts()[:2], STEPS, None)
        assert report["passed"] and report["runs_on"].startswith("onnx, stock onnxruntime ops"), report


def test_cli_export_run_verify(llama_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "art"
    args = ["export", "--model", str(llama_dir / "model"), "--priors", str(llama_dir / "priors.safetensors"),
            "--method", "static-i", "--density", "0.25", "--quant", "int4", "--group-size", "64",
            "--max-seq-len", "48", "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "int4 (group 64, accuracy level 4)" in result.output
    result = runner.invoke(main, ["run", "--artifact", str(out), "--prompt", "Tell me a story", "--max-new-tokens", "5"])
    assert result.exit_code == 0 and "k=64/256" in result.output and "tokens/s" in result.output, result.output
    result = runner.invoke(main, ["verify", "--artifact", str(out), "--model", str(llama_dir / "model"), "--json",
                                  "--steps", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["passed"] and len(report["prompts"]) == len(builtin_prompts())
    assert report["quantization"]["group_size"] == 64 and report["tolerance"] == {"mode": "distribution", "atol": None,
                                                                                   "kl": 0.05, "local_rtol": 0.1,
                                                                                   "describe": "mean KL <= 0.05"}
    # the existing directory is refused without --force and left as it was
    before = sorted(p.name for p in out.iterdir())
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "already exists" in result.output and "--force" in result.output
    assert sorted(p.name for p in out.iterdir()) == before
    assert runner.invoke(main, args + ["--force"]).exit_code == 0


@pytest.mark.parametrize("args, message", [
    (["--group-size", "48"], "'48' is not one of"),
    (["--quant", "int3"], "'int3' is not one of"),
    (["--accuracy-level", "2"], "'2' is not one of"),
])
def test_cli_refuses_bad_schemes(llama_dir, tmp_path, args, message):
    result = CliRunner().invoke(main, ["export", "--model", str(llama_dir / "model"), "--method", "griffin", *args,
                                       "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "never").exists()


def test_group_size_that_does_not_divide_the_hidden_size_says_what_would(tokenizer, tmp_path_factory, tmp_path):
    root = save_family(tmp_path_factory, tokenizer, "llama", hidden_size=96, num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(GlassExportError, match=r"(?s)hidden size \(96\) is not a multiple of --group-size 64.*group-size 32"):
        export_artifact(root / "model", None, SelectionConfig("griffin", 0.5), "onnx", tmp_path / "x",
                        max_seq_len=32, quant=QuantScheme("int4", 64))
    assert not (tmp_path / "x").exists()


def test_bad_artifacts_are_refused(llama_artifact, llama_dir, tmp_path, tokenizer, tmp_path_factory):
    broken = tmp_path / "broken"
    shutil.copytree(llama_artifact, broken)
    (broken / "decode.onnx").unlink()
    with pytest.raises(GlassExportError, match="missing decode.onnx"):
        open_artifact(broken)
    for edit, message in [
        (lambda m: m.update(format_version=99), "manifest version 99"),
        (lambda m: m["selection"].update(k=17), r"selection.k = 17, but method, density"),
        (lambda m: m.pop("kv_cache"), "lacks or garbles a field"),
    ]:
        edited = tmp_path / f"edited{len(message)}"
        shutil.copytree(llama_artifact, edited)
        manifest = json.loads((edited / "glass.json").read_text())
        edit(manifest)
        (edited / "glass.json").write_text(json.dumps(manifest))
        with pytest.raises(GlassExportError, match=message):
            open_artifact(edited)
    truncated = tmp_path / "truncated"
    shutil.copytree(llama_artifact, truncated)
    data = truncated / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(GlassExportError, match="cut short"):
        open_artifact(truncated)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(llama_artifact, corrupt)
    raw = bytearray((corrupt / "model.onnx.data").read_bytes())
    raw[1000] ^= 0xFF
    (corrupt / "model.onnx.data").write_bytes(bytes(raw))
    open_artifact(corrupt)  # sizes match: run starts quickly...
    with pytest.raises(GlassExportError, match="does not match the sha256"):
        verify_artifact(corrupt, llama_dir / "model", ["hi"], 2, None)  # ...verify hashes every file
    with pytest.raises(GlassExportError, match="no glass.json"):
        open_artifact(tmp_path)
    backend = open_artifact(llama_artifact)
    with pytest.raises(GlassExportError, match="more than the exported maximum of 64"):
        generate(backend, list(range(4, 80)), 4)
    other = save_family(tmp_path_factory, tokenizer, "llama", seed=7)
    with pytest.raises(GlassExportError, match="exported from another model"):
        verify_artifact(llama_artifact, other / "model", ["hi"], 2, None)
    with pytest.raises(GlassExportError, match="another model"):
        export_artifact(other / "model", llama_dir / "priors.safetensors", SelectionConfig("i-glass", 0.5), "onnx",
                        tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_verify_separates_ties_from_mismatches():
    """A kept set is a tie when it is what the method selects from the artifact's own local scores."""
    from glass_export.selection import select_with_ranks
    from glass_export.verify import classify_selection

    eager_scores = torch.tensor([[9.0, 8.0, 6.0, 6.0 - 1e-6, 1.0, 0.5]])
    artifact_scores = eager_scores + torch.tensor([[0, 0, 0, 2e-6, 0, 0]])  # reduction noise reorders the boundary
    # i-glass: the swap moves neuron 4 (local score 1.0, far from the tied pair) in for neuron 2 through the fused ranks
    global_rank = torch.tensor([[0, 1, 4, 5, 2, 3]])
    for config in (SelectionConfig("griffin", 0.5), SelectionConfig("i-glass", 0.5, 0.5)):
        def select(scores):
            return select_with_ranks(config, scores, global_rank, 6, 1).numpy()

        want, own = select(eager_scores), select(artifact_scores)
        assert not np.array_equal(want, own)  # the constructed boundary swap happens
        scores = (artifact_scores.numpy(), eager_scores.numpy(), np.full(1, 1e-4))  # per-layer bounds
        verdict, differing, swaps = classify_selection(own, want, own, *scores)
        assert verdict == "ties only" and differing >= 1 and swaps[0]["tie"], config
        corrupted = own.copy()
        corrupted[0, -1] = next(i for i in range(6) if i not in own[0] and i not in want[0])  # selected by neither
        assert classify_selection(np.sort(corrupted), want, own, *scores)[0] == "mismatch"
        assert classify_selection(want, want, want, *scores)[0] == "identical"
        # the artifact's set follows from its own scores, but those are far from eager's: not a tie
        assert classify_selection(own, want, own, artifact_scores.numpy() * 2, eager_scores.numpy(),
                                  np.full(1, 1e-4))[0] == "mismatch"


def test_verify_clamps_steps_to_the_artifact_and_fails_a_corrupted_decode(llama_artifact, llama_dir, tmp_path):
    report = verify_artifact(llama_artifact, llama_dir / "model", ["Tell me about rivers"], 500, None)
    row = report["prompts"][0]
    assert report["passed"] and row["tokens_expected"] == 64 - row["prompt_tokens"] + 1 == row["tokens_compared"]
    # a wrong decode graph (weights of another layer) is caught even though prefill and selection agree
    bad = with_layers_swapped(llama_artifact, tmp_path / "bad", "GatherFFN", range(1, 2))
    report = verify_artifact(bad, llama_dir / "model", ["Tell me about rivers"], 8, None)
    row = report["prompts"][0]
    assert not report["passed"] and row["selection"] == "identical" and max(row["step_max_abs_diff"]) > 1e-2


def with_layers_swapped(artifact: Path, out: Path, op_type: str, slots) -> Path:
    """A copy of the artifact whose decode graph feeds layer 0's FFN weights (inputs `slots` of its
    op_type node) to layer 1 and back; the checksum of decode.onnx is dropped so it still opens."""
    shutil.copytree(artifact, out)
    decode = onnx.load(str(out / "decode.onnx"), load_external_data=False)
    first, second = [n for n in decode.graph.node if n.op_type == op_type][:2]
    for slot in slots:
        first.input[slot], second.input[slot] = second.input[slot], first.input[slot]
    onnx.save(decode, str(out / "decode.onnx"))
    manifest = json.loads((out / "glass.json").read_text())
    manifest["checksums"].pop("decode.onnx")
    (out / "glass.json").write_text(json.dumps(manifest))
    return out


def test_distribution_check_of_int8_activation_artifacts_fails_a_corrupted_decode(llama_dir, tmp_path):
    """int4 with int8 activations is verified by next-token distributions (KL): still tight enough to catch
    a decode graph that reads another layer's FFN."""
    good = tmp_path / "int4"
    export_artifact(llama_dir / "model", None, SelectionConfig("griffin", 0.5), "onnx", good, max_seq_len=64,
                    quant=QuantScheme("int4"))
    report = verify_artifact(good, llama_dir / "model", ["Tell me about rivers"], 8, None)
    assert report["passed"] and report["tolerance"]["mode"] == "distribution"
    assert report["prompts"][0]["kl_mean"] < 1e-3  # far inside the 0.05 bound on this 2-layer model
    bad = with_layers_swapped(good, tmp_path / "bad", "GatherFFNQ", range(1, 5))  # codes, scales of gate/up, down
    report = verify_artifact(bad, llama_dir / "model", ["Tell me about rivers"], 8, None)
    row = report["prompts"][0]
    assert not report["passed"] and row["selection"] == "identical" and row["kl_mean"] > 0.05, row["kl_mean"]


def test_interrupted_export_leaves_nothing(llama_dir, tmp_path, monkeypatch):
    import glass_export.export.onnx_export as onnx_export

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "check_loads", fail)
    with pytest.raises(KeyboardInterrupt):
        export_artifact(llama_dir / "model", None, SelectionConfig("griffin", 0.5), "onnx", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_boundary_tie_is_reported_and_passes(tokenizer, tmp_path):
    """Two neurons 2e-5 apart at the top-k boundary, ranked the other way by the artifact (near_tie.py):
    verify reports a tie with its pair, passes, and checks decode on the artifact's own kept set."""
    from near_tie import A, B, nudge_b_in_artifact, save_near_tie_model

    model_dir = save_near_tie_model(tmp_path, tokenizer)
    out = tmp_path / "art"
    export_artifact(model_dir, None, SelectionConfig("griffin", 0.5), "onnx", out, max_seq_len=64)
    assert verify_artifact(out, model_dir, builtin_prompts()[:2], 8, None)["selection_summary"]["identical"] == 2
    nudge_b_in_artifact(model_dir, out)
    report = verify_artifact(out, model_dir, builtin_prompts()[:2], 8, None)
    assert report["passed"] and report["selection_summary"]["ties only"] == 2, report["selection_summary"]
    for row in report["prompts"]:
        (swap,) = row["swaps"]
        (pair,) = swap["pairs"]
        assert swap["layer"] == 0 and swap["tie"] and (pair["artifact_kept"], pair["eager_kept"]) == (B, A)
        assert pair["places"] == [B, A] and pair["relative_score_gap"] < 1e-4
        assert max(row["step_max_abs_diff"]) <= 1e-4  # decode checked exactly on the artifact's own set
    # eval --artifact counts the prompts whose kept set differs and what it did to KL
    from glass_export.evaluation import run_evaluation

    run_evaluation(model_dir, tmp_path / "eval", artifact=out, prompts_path=None, max_new_tokens=6)
    swaps = json.loads((tmp_path / "eval" / "results.json").read_text())["boundary_swaps"]
    assert swaps["prompts_with_swaps"] == swaps["prompts"] > 0 and abs(swaps["kl_difference"]) < 1e-3, swaps
