"""ExecuTorch export: one .pte with prefill and decode methods, verified against eager PyTorch.

Tolerances: fp32 logits within 1e-4 absolute (XNNPACK fp32 kernels measured within 1e-5 here),
identical kept-index sets, identical greedy tokens for 32 steps.
"""

import json
import os
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from glass_export.artifact import load_manifest
from glass_export.cli import main
from glass_export.eager import GlassModel
from glass_export.errors import GlassExportError
from glass_export.example import FAMILIES, build_model
from glass_export.export import export_artifact
from glass_export.export.graphs import rope_through_glass
from glass_export.models import load_model
from glass_export.models.decoder import SANDWICH_FAMILIES
from glass_export.prompts import builtin_prompts
from glass_export.quantization import QuantScheme
from glass_export.runtime import open_artifact
from glass_export.selection import SelectionConfig
from glass_export.verify import verify_artifact
from glass_ops import native

from test_onnx_export import assert_matches_eager, save_family
from test_threads import run_python

ATOL = 1e-4
STEPS = 32


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("untied")
    model = build_model("llama", seed=3, vocab_size=len(tokenizer), tie_word_embeddings=False)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def untied_artifact(untied_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("et") / "griffin"
    export_artifact(untied_dir / "model", None, SelectionConfig("griffin", 0.5), "executorch", out, max_seq_len=64)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_and_verifies(family, tokenizer, tmp_path_factory):
    root = save_family(tmp_path_factory, tokenizer, family)
    out = root / "pte"
    method = {"gemma": "a-glass", "qwen3": "static-a"}.get(family, "i-glass")
    config = SelectionConfig(method, 0.5, 0.6 if method.endswith("glass") else None)
    manifest = export_artifact(root / "model", root / "priors.safetensors", config, "executorch", out, max_seq_len=64)
    assert manifest.target == "executorch" and (out / "model.pte").is_file()
    # ExecuTorch's fused attention kernels wherever they can express the family's attention (not Gemma 2's soft-cap);
    # the rotary embedding through glass::rope in every family (Phi-3's tiny config rotates the whole head)
    fused = family != "gemma2"
    assert ("llama::custom_sdpa.out" in manifest.runtime["custom_ops"]) == fused
    assert "glass::rope.out" in manifest.runtime["custom_ops"]
    assert "glass::rms_norm.out" in manifest.runtime["custom_ops"]  # every RMSNorm (graphs.norms_through_glass)
    # a prompt-dependent selection in one glass::select_kept call (static-a's needs no local ranks)
    assert ("glass::select_kept.out" in manifest.runtime["custom_ops"]) == config.needs_local_stats
    assert manifest.kv.layout == ("[batch=1, seq, kv_heads, head_dim]" if fused else "[batch=1, kv_heads, seq, head_dim]")
    assert_matches_eager(verify_artifact(out, root / "model", builtin_prompts()[:2], STEPS, ATOL))


@pytest.mark.parametrize("weights", ["int8", "int4"])
@pytest.mark.parametrize("family", FAMILIES)
def test_quantised_exports_verify(family, weights, tokenizer, tmp_path_factory):
    """int8/int4 FFN through the glass kernels, the rest through torchao on XNNPACK and the quantized embedding."""
    root = save_family(tmp_path_factory, tokenizer, family)
    out = root / f"pte-{weights}"
    manifest = export_artifact(root / "model", root / "priors.safetensors", SelectionConfig("i-glass", 0.5, 0.4),
                               "executorch", out, max_seq_len=64, quant=QuantScheme(weights))
    # the decode FFN with its layer's residual add, unless the family normalises the FFN's output first
    decode_ffn = "glass::norm_gather_ffn_q.out" if family in SANDWICH_FAMILIES else "glass::residual_norm_gather_ffn_q.out"
    assert {decode_ffn, "glass::ffn_up_q.out", "glass::ffn_down_q.out"} <= set(manifest.runtime["custom_ops"])
    assert "torchao" in manifest.runtime["non_ffn_quantization"]
    assert_matches_eager(verify_artifact(out, root / "model", builtin_prompts()[:2], STEPS, None))
    # Tiny models carry a large share of fp32 norms and program, so the bound is looser than on real models (SmolLM2's int4 .pte: docs/quantization.md); an FFN or a
    # projection left in fp32 breaks it.
    fp32_weights = manifest.runtime["model_weight_bytes"]
    assert manifest.runtime["pte_bytes"] < (0.65 if weights == "int8" else 0.5) * fp32_weights


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_tied_table_is_stored_once(tokenizer, tmp_path, monkeypatch, weights):
    """A tied embedding and LM head read one table through the glass ops (sparse artifacts and dense twins
    alike). The table dominates this model (vocab 4096 x 64). fp32: the .pte exceeds the weights by less than
    half a table. int4: it is smaller than the program with the pair stored the old way (the stock
    quantized embedding plus XNNPACK's LM head) by at least 90 % of a quantised copy of the table."""
    model = build_model("llama", seed=1, vocab_size=4096)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    table = model.get_input_embeddings().weight
    sizes = {}
    for config in (SelectionConfig("griffin", 0.5), SelectionConfig("dense")):
        out = tmp_path / config.method
        manifest = export_artifact(tmp_path / "model", None, config, "executorch", out, max_seq_len=32,
                                   quant=QuantScheme(weights))
        head = "glass::linear_rows_q.out" if weights == "int4" else "glass::linear_rows.out"
        assert head in manifest.runtime["custom_ops"]
        sizes[config.method] = manifest.runtime["pte_bytes"]
        if weights == "fp32":
            assert sizes[config.method] - manifest.runtime["model_weight_bytes"] < 0.5 * table.numel() * 4
    assert_matches_eager(verify_artifact(tmp_path / "griffin", tmp_path / "model", builtin_prompts()[:1], 8,
                                         None if weights == "int4" else ATOL), steps=8)
    if weights == "int4":
        monkeypatch.setattr("glass_export.export.graphs.glass_reads_tied_table", lambda model: False)
        manifest = export_artifact(tmp_path / "model", None, SelectionConfig("dense"), "executorch",
                                   tmp_path / "stored-twice", max_seq_len=32, quant=QuantScheme(weights))
        assert "glass::linear_rows_q.out" not in manifest.runtime["custom_ops"]
        assert manifest.runtime["pte_bytes"] - sizes["dense"] >= 0.9 * table.numel() / 2


def test_executorch_refuses_float_activation_schemes(untied_dir, tmp_path):
    with pytest.raises(GlassExportError, match="accuracy-level 1 is not available"):
        export_artifact(untied_dir / "model", None, SelectionConfig("griffin", 0.5), "executorch", tmp_path / "x",
                        quant=QuantScheme("int4", 32, 1))
    assert not (tmp_path / "x").exists()


def test_decode_reads_the_cache_prefill_wrote(untied_artifact, untied_dir):
    backend = open_artifact(untied_artifact)
    eager = GlassModel(load_model(untied_dir / "model"), SelectionConfig("griffin", 0.5))
    results = {}
    for name, prompt in (("a", [1, 40, 71, 100, 5]), ("b", [1, 300, 12, 77, 150])):
        backend.prefill(prompt)
        logits = backend.decode(17)  # same token, same position
        eager.prefill(prompt)
        np.testing.assert_allclose(logits, eager.decode(17), atol=ATOL, rtol=0)
        results[name] = logits
    # Only the cache differs between the two decode calls: decode must have read it.
    assert np.abs(results["a"] - results["b"]).max() > 1e-3


def test_pte_holds_the_weights_once(untied_artifact, untied_dir):
    manifest = load_manifest(untied_artifact).runtime
    model = load_model(untied_dir / "model")
    ffn_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if ".mlp." in n)
    pte = (untied_artifact / "model.pte").stat().st_size
    assert pte == manifest["pte_bytes"]
    assert manifest["model_weight_bytes"] <= pte
    # The FFN weights are read by prefill (ffn_up/ffn_down) and decode (gather_ffn): a second copy
    # would add ffn_bytes; what is over the weights is the program itself (~115 KB here).
    assert pte - manifest["model_weight_bytes"] < 0.5 * ffn_bytes, (pte, manifest["model_weight_bytes"], ffn_bytes)


def test_dense_twin_and_cli(untied_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "dense"
    args = ["export", "--model", str(untied_dir / "model"), "--dense", "--target", "executorch",
            "--max-seq-len", "48", "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "model.pte" in result.output
    result = runner.invoke(main, ["run", "--artifact", str(out), "--prompt", "Hello there", "--max-new-tokens", "6"])
    assert result.exit_code == 0 and "executorch" in result.output and "tokens/s" in result.output, result.output
    result = runner.invoke(main, ["verify", "--artifact", str(out), "--model", str(untied_dir / "model"), "--json",
                                  "--steps", "8"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{"):])["passed"]
    result = runner.invoke(main, ["run", "--artifact", str(out), "--prompt", "word " * 60, "--max-new-tokens", "2"])
    assert result.exit_code == 1 and "more than the exported maximum of 48" in result.output


@pytest.mark.parametrize("weights", ["fp32", "int4"])
def test_dense_twin_ffn_is_the_stock_one(untied_dir, tmp_path, weights):
    """Dense twins never gather: their FFNs are the model's own linears on XNNPACK (torchao-quantised like the
    rest). What a twin shares with its sparse artifact goes through the glass kernels too: an untied model's
    twin calls glass::rope (the rotary embedding) and glass::rms_norm (the norms) and no other glass kernel (a
    tied table is read by the glass kernels: test_tied_table_is_stored_once)."""
    out = tmp_path / f"dense-{weights}"
    manifest = export_artifact(untied_dir / "model", None, SelectionConfig("dense"), "executorch", out, max_seq_len=48,
                               quant=QuantScheme(weights))
    assert [op for op in manifest.runtime["custom_ops"] if op.startswith("glass::")] == ["glass::rms_norm.out",
                                                                                      "glass::rope.out"]
    report = verify_artifact(out, untied_dir / "model", builtin_prompts()[:2], 8, None)
    assert report["passed"] and "native kernels" in report["runs_on"], report


def delegate_calls(pte, method: str) -> int:
    """How many XNNPACK delegate calls one run of the method makes (the program's instruction list)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(pte.read_bytes())
    plan = next(plan for plan in getattr(program, "program", program).execution_plan if plan.name == method)
    return sum(type(step.instr_args).__name__ == "DelegateCall" for chain in plan.chains for step in chain.instructions)


def test_int4_decode_layers_call_xnnpack_twice(untied_dir, tmp_path):
    """Per layer, an int4 GLASS decode step calls XNNPACK twice: the q/k/v projections, then the output projection
    with the residual add. Its norms, rotary embedding, attention and FFN (with the next residual add) are single
    kernel calls, and the views between them are aliases (executorch_export.decode_partitioner). The dense twin
    adds one call a layer, its FFN. Before those changes it was four and five."""
    layers = build_model("llama").config.num_hidden_layers
    calls = {}
    for config in (SelectionConfig("griffin", 0.5), SelectionConfig("dense")):
        out = tmp_path / config.method
        export_artifact(untied_dir / "model", None, config, "executorch", out, max_seq_len=32, quant=QuantScheme("int4"))
        calls[config.method] = delegate_calls(out / "model.pte", "decode")
    # plus the rotary tables' call at the start and the untied LM head's at the end
    assert calls == {"griffin": 2 * layers + 2, "dense": 3 * layers + 2}


def test_missing_kernel_library_says_how_to_build(untied_artifact, monkeypatch, tmp_path):
    monkeypatch.setattr(native, "search_dirs", lambda: [tmp_path])
    monkeypatch.setattr(native, "_loaded", {})
    with pytest.raises(GlassExportError, match="(?s)needs the glass kernels.*runtime_ops/build.sh"):
        open_artifact(untied_artifact)


def test_an_operator_no_library_registers_says_re_export(tmp_path):
    """An artifact from another glass-export version may call a glass op this kernel library does not have
    (the quantised decode op became glass::norm_gather_ffn_q): the load error names the cause and the fix."""
    from executorch.exir import to_edge
    from executorch.runtime import Runtime

    from glass_export.runtime.executorch_backend import load_failure

    torch.library.define("glass_test::twice", "(Tensor x) -> Tensor")
    torch.library.define("glass_test::twice.out", "(Tensor x, *, Tensor(a!) out) -> Tensor(a!)")
    torch.library.impl("glass_test::twice", "CompositeExplicitAutograd")(lambda x: 2 * x)
    torch.library.impl("glass_test::twice.out", "CompositeExplicitAutograd")(lambda x, out: out.copy_(2 * x))

    class Twice(torch.nn.Module):
        def forward(self, x):
            return torch.ops.glass_test.twice(x)

    program = to_edge(torch.export.export(Twice(), (torch.ones(2),))).to_executorch()
    (tmp_path / "model.pte").write_bytes(program.buffer)
    with pytest.raises(RuntimeError) as raised:
        Runtime.get().load_program(str(tmp_path / "model.pte")).load_method("forward")
    error = load_failure(tmp_path, raised.value)
    assert "calls an operator that no loaded kernel library registers" in error.problem
    assert "re-export the artifact with this glass-export" in error.fix


def test_threads_and_no_native_reach_executorch(untied_artifact):
    """run --threads sets ExecuTorch's one thread pool; --no-native is refused (no fallback exists)."""
    with open_artifact(untied_artifact, threads=1) as one:
        assert one.threads == 1 and "1 threads" in one.description
    with open_artifact(untied_artifact, threads=2) as two:
        assert two.threads == 2
    with pytest.raises(GlassExportError, match="no fallback"):
        open_artifact(untied_artifact, use_native=False)


def test_a_boundary_tie_is_reported_and_passes(tokenizer, tmp_path):
    """As on ONNX (test_onnx_export.py): a constructed top-k boundary swap is a tie, and verify passes."""
    from near_tie import A, B, nudge_b_in_artifact, save_near_tie_model

    model_dir = save_near_tie_model(tmp_path, tokenizer)
    out = tmp_path / "pte"
    export_artifact(model_dir, None, SelectionConfig("griffin", 0.5), "executorch", out, max_seq_len=64)
    nudge_b_in_artifact(model_dir, out)
    report = verify_artifact(out, model_dir, builtin_prompts()[:2], 8, None)
    assert report["passed"] and report["selection_summary"]["ties only"] == 2, report["selection_summary"]
    pairs = [pair for row in report["prompts"] for swap in row["swaps"] for pair in swap["pairs"]]
    assert {(p["artifact_kept"], p["eager_kept"]) for p in pairs} == {(B, A)}


def test_executorch_ranks_tied_local_scores_as_eager_does(tmp_path):
    """ExecuTorch's topk orders equal values its own way; the graphs' ranking (ranks_by_topk) does not depend on it."""
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from glass_export.selection import ranks, ranks_by_topk

    class Ranking(torch.nn.Module):
        def forward(self, scores):
            return ranks_by_topk(scores)

    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0, 0.0, 2.0] * 64])
    program = to_edge_transform_and_lower(torch.export.export(Ranking(), (scores,))).to_executorch()
    (tmp_path / "ranks.pte").write_bytes(program.buffer)
    method = Runtime.get().load_program(str(tmp_path / "ranks.pte")).load_method("forward")
    assert torch.equal(method.execute([scores])[0], ranks(scores))


def test_rope_through_glass_keeps_a_partial_rotary_embedding(tokenizer):
    """While tracing, a family's full rotary embedding becomes glass::rope; a partial one (Phi-3 with
    partial_rotary_factor < 1, cos narrower than the head) still runs the family's own function, and the
    original is back afterwards."""
    model = build_model("phi3", seed=1, vocab_size=len(tokenizer), partial_rotary_factor=0.5)
    module = sys.modules[type(model.model.layers[0].self_attn).__module__]
    original = module.apply_rotary_pos_emb
    q, k = torch.randn(1, 4, 3, 16), torch.randn(1, 2, 3, 16)
    full, partial = torch.randn(2, 1, 3, 16), torch.randn(2, 1, 3, 8)
    with rope_through_glass(model):
        assert module.apply_rotary_pos_emb is not original
        for tables in (full, partial):
            got = module.apply_rotary_pos_emb(q, k, *tables)
            want = original(q, k, *tables)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)
    assert module.apply_rotary_pos_emb is original


def test_prefill_starts_no_openmp_team(untied_artifact):
    """llama::custom_sdpa calls MKL from ExecuTorch's pool threads; with glass_export's thread settings MKL starts
    no OpenMP team there (a new thread per process, spinning on the cores ExecuTorch uses: glass_export/threads.py).
    The control run, with MKL allowed 2 threads, shows the team the settings prevent (where MKL threads them).
    tests/test_threads.py checks the setting itself on every CPU."""
    code = ("import os, glass_export\n"
            "from glass_export.runtime import open_artifact\n"
            f"backend = open_artifact({str(untied_artifact)!r}, threads=2)\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "backend.prefill(list(range(1, 40)))\n"
            "print(len(os.listdir('/proc/self/task')) - before)\n")

    def new_threads(**env):
        return int(run_python(code, **env)[-1])

    assert new_threads() == 0
    # The control needs an MKL that threads these small attention products: on AMD CPUs (its generic path) it
    # does; on an Intel Xeon (2 vCPUs) it ran them on one thread and started no team, with or without the settings.
    with open("/proc/cpuinfo") as cpuinfo:
        amd = "AuthenticAMD" in cpuinfo.read()
    if amd and (os.cpu_count() or 1) > 1 and torch.backends.mkl.is_available():
        assert new_threads(MKL_NUM_THREADS="2") > 0
