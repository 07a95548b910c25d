"""`glass-export eval`: metrics obey invariants that can fail, on tiny models, end to end."""

import json

import pytest
import torch
from click.testing import CliRunner

from glass_export.calibration import compute_priors
from glass_export.cli import main
from glass_export.evaluation import eager_backends, evaluate, plan_runs
from glass_export.example import build_model
from glass_export.models import ffn_layers, model_info
from glass_export.quantization import QuantScheme
from glass_export.selection import SelectionConfig

PROMPTS = [[1, 40, 71, 100, 5, 9], [1, 300, 12, 77, 150, 8, 22]]


@pytest.fixture(scope="module")
def priors(llama, tokenizer):
    gen = torch.Generator().manual_seed(2)
    return compute_priors(llama, torch.randint(4, len(tokenizer), (4, 24), generator=gen).tolist())


def eager(model, priors=None, quant=QuantScheme()):
    return eager_backends(model, priors, quant, model_info(model))


def test_full_density_matches_dense_and_kl_is_never_negative(llama, priors):
    runs = [SelectionConfig("dense"), SelectionConfig("griffin", 1.0), SelectionConfig("i-glass", 1.0, 0.5),
            SelectionConfig("griffin", 0.5), SelectionConfig("random", 0.25), SelectionConfig("static-a", 0.5)]
    results = evaluate(llama, PROMPTS, runs, 16, eager(llama, priors))
    dense, griffin_full, iglass_full = results[:3]
    for full in (griffin_full, iglass_full):
        assert abs(full.kl) <= 1e-6  # only float noise between cached decode and one full forward
        assert full.perplexity == pytest.approx(dense.perplexity, rel=1e-5)
    # KL is not clamped: a sign error in the formula would make these negative
    assert all(r.kl > 1e-4 for r in results[3:])
    assert results[3].kl > 1e-4  # density 0.5 really changes the distribution
    assert results[5].vs_griffin_kl == pytest.approx(results[5].kl / results[3].kl - 1)


def test_random_is_not_better_than_griffin_when_a_few_neurons_matter(tokenizer):
    """A model whose FFN output comes almost entirely from a known quarter of its neurons."""
    model = build_model("llama", seed=4, vocab_size=len(tokenizer))
    m = model.config.intermediate_size
    important = torch.randperm(m, generator=torch.Generator().manual_seed(9))[: m // 4]
    scale = torch.full((m,), 0.1)
    scale[important] = 3.0
    with torch.no_grad():
        for ffn in ffn_layers(model):
            ffn.up.mul_(scale[:, None])
    results = evaluate(model, PROMPTS, [SelectionConfig("griffin", 0.25), SelectionConfig("random", 0.25)], 16,
                       eager(model))
    griffin, random = results
    assert random.kl > 2 * griffin.kl, (random.kl, griffin.kl)
    assert random.perplexity >= griffin.perplexity * 0.9


def test_quantised_eval_measures_the_quantisation_error(llama):
    """KL of dense int4 against fp32 dense: positive, and larger than int8's."""
    runs = [SelectionConfig("dense")]
    kl = {weights: evaluate(llama, PROMPTS, runs, 12, eager(llama, quant=QuantScheme(weights)))[0].kl
          for weights in ("fp32", "int8", "int4")}
    assert abs(kl["fp32"]) < 1e-6 < kl["int8"] < kl["int4"], kl


def test_plan_runs_sweeps_lambda_only_for_glass():
    runs = plan_runs(["dense", "griffin", "i-glass"], [0.25, 0.5], [0.3, 0.6])
    assert [(r.method, r.density, r.lam) for r in runs] == [
        ("dense", 0.5, None), ("griffin", 0.25, None), ("i-glass", 0.25, 0.3), ("i-glass", 0.25, 0.6),
        ("griffin", 0.5, None), ("i-glass", 0.5, 0.3), ("i-glass", 0.5, 0.6)]


def test_cli_eval_writes_results_and_refuses_bad_input(example_dir, tmp_path):
    runner = CliRunner()
    priors = tmp_path / "priors.safetensors"
    assert runner.invoke(main, ["calibrate", "--model", str(example_dir / "model"), "--data",
                                str(example_dir / "corpus.txt"), "--seq-len", "32", "--out", str(priors)]).exit_code == 0
    out = tmp_path / "eval"
    base = ["eval", "--model", str(example_dir / "model"), "--priors", str(priors), "--max-new-tokens", "8"]
    result = runner.invoke(main, base + ["--densities", "0.5", "--lambdas", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in data["runs"]} == {"dense", "griffin", "static-a", "static-i", "a-glass", "i-glass", "random"}
    assert (out / "results.md").read_text().startswith("| method")
    assert (out / "kl_vs_density.png").read_bytes()[:4] == b"\x89PNG"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    for args, message in [
        (["--prompts", str(empty)], "holds no prompt"),
        (["--methods", "griffin,nope"], "unknown method 'nope'"),
        (["--densities", "0.5,1.5"], "density must be in (0, 1]"),
        (["--densities", "a,b"], "comma-separated list"),
    ]:
        target = tmp_path / "never"
        result = runner.invoke(main, base + args + ["--out", str(target)])
        assert result.exit_code in (1, 2) and message in result.output, (args, result.output)
        assert not target.exists()


def test_eval_of_an_exported_artifact_matches_the_eager_numbers(example_dir, tmp_path):
    from glass_export.export import export_artifact

    art = tmp_path / "art"
    export_artifact(example_dir / "model", None, SelectionConfig("griffin", 0.5), "onnx", art, max_seq_len=64)
    runner = CliRunner()
    for name, extra in (("eager", ["--methods", "griffin", "--densities", "0.5"]), ("artifact", ["--artifact", str(art)])):
        result = runner.invoke(main, ["eval", "--model", str(example_dir / "model"), "--max-new-tokens", "10",
                                      "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        if name == "artifact":  # the same kept sets as eager PyTorch's on every prompt, and it says so
            assert "Kept sets: 0 of" in result.output
    eager = json.loads((tmp_path / "eager" / "results.json").read_text())["runs"][0]
    shipped = json.loads((tmp_path / "artifact" / "results.json").read_text())
    assert shipped["boundary_swaps"] == {"prompts": shipped["prompts"], "prompts_with_swaps": 0}
    exported = shipped["runs"][0]
    assert exported["method"] == "griffin" and exported["tokens"] == eager["tokens"]
    assert exported["perplexity"] == pytest.approx(eager["perplexity"], rel=1e-4)
    assert exported["kl"] == pytest.approx(eager["kl"], rel=1e-3, abs=1e-6)
