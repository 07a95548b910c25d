"""Two-graph ONNX export of tiny models of every family, verified against eager PyTorch.

Tolerances: fp32 logits within 1e-4 absolute at prefill and at every decode step,
identical kept-index sets, identical greedy tokens for 32 steps.
"""

import json
import shutil

import onnx
import pytest
import torch
from click.testing import CliRunner

from glass_export.calibration import compute_priors
from glass_export.cli import main
from glass_export.errors import GlassExportError
from glass_export.example import FAMILIES, build_model
from glass_export.export import export_artifact
from glass_export.export.onnx_export import INLINE_LIMIT
from glass_export.prompts import builtin_prompts
from glass_export.runtime import generate, open_artifact
from glass_export.selection import SelectionConfig
from glass_export.verify import verify_artifact

ATOL = 1e-4
STEPS = 32


def save_family(tmp_path_factory, tokenizer, family, seed=0):
    """A saved tiny model of the family and its priors file."""
    root = tmp_path_factory.mktemp(family)
    model = build_model(family, seed=seed, vocab_size=len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    gen = torch.Generator().manual_seed(1)
    priors = compute_priors(model, torch.randint(4, len(tokenizer), (4, 24), generator=gen).tolist())
    priors.save(root / "priors.safetensors")
    return root


def assert_matches_eager(report, steps=STEPS, atol=ATOL):
    """Every prompt: logits within atol at prefill and each step, same indices, same greedy tokens."""
    for row in report["prompts"]:
        assert row["prefill_max_abs_diff"] <= atol and max(row["step_max_abs_diff"]) <= atol, row
        assert row["indices_identical"] and row["first_token_mismatch"] is None and row["tokens_compared"] == steps, row
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


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_and_verifies(family, tokenizer, tmp_path_factory):
    root = save_family(tmp_path_factory, tokenizer, family)
    out = root / "artifact"
    method = {"gemma": "a-glass", "phi3": "griffin"}.get(family, "i-glass")
    config = SelectionConfig(method, 0.5, 0.4 if method.endswith("glass") else None)
    manifest = export_artifact(root / "model", root / "priors.safetensors", config, "onnx", out, max_seq_len=64)
    assert manifest["selection"]["k"] == 128 and manifest["model"]["model_type"] == family
    # Both ways GatherFFN runs: the native ORT kernel, and the model-local function on a stock ORT.
    native = verify_artifact(out, root / "model", builtin_prompts()[:3], STEPS, ATOL)
    assert_matches_eager(native)
    assert native["op_implementation"].startswith("native (") and "libglass_ort_ops.so" in native["op_implementation"]
    fallback = verify_artifact(out, root / "model", builtin_prompts()[:3], STEPS, ATOL, use_native=False)
    assert_matches_eager(fallback)
    assert fallback["op_implementation"] == "ONNX function fallback"


def test_graphs_names_and_custom_op(llama_artifact):
    prefill = onnx.load(str(llama_artifact / "prefill.onnx"), load_external_data=False)
    decode = onnx.load(str(llama_artifact / "decode.onnx"), load_external_data=False)
    assert [i.name for i in prefill.graph.input] == ["input_ids"]
    assert [o.name for o in prefill.graph.output][:5] == ["logits", "glass_local_scores", "glass_indices",
                                                            "present.0.key", "present.0.value"]
    assert [i.name for i in decode.graph.input][:5] == ["input_ids", "position_ids", "glass_indices",
                                                        "past_key_values.0.key", "past_key_values.0.value"]
    gathers = [n for n in decode.graph.node if n.domain == "glass" and n.op_type == "GatherFFN"]
    assert len(gathers) == 2  # one per layer
    assert [(f.domain, f.name) for f in decode.functions] == [("glass", "GatherFFN")]
    for name in ("prefill.onnx", "decode.onnx"):
        onnx.checker.check_model(str(llama_artifact / name))
    manifest = json.loads((llama_artifact / "glass.json").read_text())
    assert manifest["onnx"]["custom_op"] == {"domain": "glass", "op_type": "GatherFFN", "version": 1}
    assert "tokenizer.json" in manifest["tokenizer"]["files"] and (llama_artifact / "tokenizer.json").is_file()


def test_weights_are_stored_once(llama_artifact, llama_dir):
    from glass_export.models import load_model

    model = load_model(llama_dir / "model")
    unique = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    weight_bytes = sum(b for b in unique.values() if b >= INLINE_LIMIT)
    data = (llama_artifact / "model.onnx.data").stat().st_size
    # one copy of the weights (plus alignment padding), though both graphs read the FFN weights
    assert weight_bytes <= data <= weight_bytes * 1.02 + 64 * 64, (data, weight_bytes)
    manifest = json.loads((llama_artifact / "glass.json").read_text())
    assert manifest["onnx"]["weights_bytes_referenced_by_graphs"] > 1.3 * manifest["onnx"]["weights_bytes"]
    for name in ("prefill.onnx", "decode.onnx"):
        graph = onnx.load(str(llama_artifact / name), load_external_data=False).graph
        large_inline = [i.name for i in graph.initializer if len(i.raw_data) >= INLINE_LIMIT]
        assert large_inline == []
        assert {e.value for i in graph.initializer for e in i.external_data if e.key == "location"} == {"model.onnx.data"}


def test_dense_twin_uses_the_same_path_and_no_gather(llama_dir, tmp_path):
    out = tmp_path / "dense"
    manifest = export_artifact(llama_dir / "model", None, SelectionConfig("dense"), "onnx", out, max_seq_len=64)
    assert manifest["selection"]["k"] == manifest["selection"]["m"] and not manifest["selection"]["sparse_decode"]
    decode = onnx.load(str(out / "decode.onnx"), load_external_data=False)
    assert not [n for n in decode.graph.node if n.domain == "glass"]
    assert verify_artifact(out, llama_dir / "model", builtin_prompts()[:2], STEPS, ATOL)["passed"]


def test_cli_export_run_verify(llama_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "art"
    args = ["export", "--model", str(llama_dir / "model"), "--priors", str(llama_dir / "priors.safetensors"),
            "--method", "static-i", "--density", "0.25", "--max-seq-len", "48", "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["run", "--artifact", str(out), "--prompt", "Tell me a story", "--max-new-tokens", "5"])
    assert result.exit_code == 0 and "k=64/256" in result.output and "tokens/s" in result.output, result.output
    result = runner.invoke(main, ["verify", "--artifact", str(out), "--model", str(llama_dir / "model"), "--json",
                                  "--steps", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["passed"] and len(report["prompts"]) == len(builtin_prompts())
    # the existing directory is refused without --force and left as it was
    before = sorted(p.name for p in out.iterdir())
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "not empty" in result.output and "--force" in result.output
    assert sorted(p.name for p in out.iterdir()) == before
    assert runner.invoke(main, args + ["--force"]).exit_code == 0


def test_bad_artifacts_are_refused(llama_artifact, llama_dir, tmp_path, tokenizer):
    broken = tmp_path / "broken"
    shutil.copytree(llama_artifact, broken)
    (broken / "decode.onnx").unlink()
    with pytest.raises(GlassExportError, match="missing decode.onnx"):
        open_artifact(broken)
    old = tmp_path / "old"
    shutil.copytree(llama_artifact, old)
    manifest = json.loads((old / "glass.json").read_text())
    manifest["format_version"] = 99
    (old / "glass.json").write_text(json.dumps(manifest))
    with pytest.raises(GlassExportError, match="manifest version 99"):
        open_artifact(old)
    with pytest.raises(GlassExportError, match="no glass.json"):
        open_artifact(tmp_path)
    backend = open_artifact(llama_artifact)
    with pytest.raises(GlassExportError, match="more than the exported maximum of 64"):
        generate(backend, list(range(4, 80)), 4)
    other = save_family(tmp_path_factory_for(tmp_path), tokenizer, "llama", seed=7)
    with pytest.raises(GlassExportError, match="exported from another model"):
        verify_artifact(llama_artifact, other / "model", ["hi"], 2, ATOL)
    with pytest.raises(GlassExportError, match="another model"):
        export_artifact(other / "model", llama_dir / "priors.safetensors", SelectionConfig("i-glass", 0.5), "onnx",
                        tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_interrupted_export_leaves_nothing(llama_dir, tmp_path, monkeypatch):
    import glass_export.export.onnx_export as onnx_export

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "share_weights", fail)
    with pytest.raises(KeyboardInterrupt):
        export_artifact(llama_dir / "model", None, SelectionConfig("griffin", 0.5), "onnx", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def tmp_path_factory_for(tmp_path):
    class Factory:
        def mktemp(self, name):
            path = tmp_path / name
            path.mkdir()
            return path

    return Factory()
