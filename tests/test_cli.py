"""The command line end to end on the built-in example, and its refusals of bad input."""

import pytest
from click.testing import CliRunner

from glass_export.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def priors_file(example_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("priors") / "priors.safetensors"
    result = run("calibrate", "--model", example_dir / "model", "--data", example_dir / "corpus.txt",
                 "--seq-len", 32, "--max-tokens", 512, "--batch-size", 2, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    # the names in the "Commands:" section only (the group's own help text mentions several of them)
    listed = {line.split()[0] for line in result.output.split("Commands:", 1)[1].splitlines() if line.strip()}
    assert listed == {"calibrate", "generate", "inspect", "example", "convert-gguf", "export", "run", "verify", "eval",
                      "tune"}
    for command in listed:
        sub = run(command, "--help")
        assert sub.exit_code == 0 and sub.output.startswith("Usage: ") and f" {command} [OPTIONS]" in sub.output, sub.output


def test_calibrate_inspect_generate(example_dir, priors_file):
    result = run("inspect", priors_file, "--json")
    assert result.exit_code == 0, result.output
    assert '"tokens": 512' in result.output and '"kind": "files"' in result.output
    assert "impact share" in run("inspect", priors_file).output
    result = run("generate", "--model", example_dir / "model", "--priors", priors_file, "--method", "a-glass",
                 "--density", 0.5, "--lambda", 0.25, "--prompt", "The lighthouse", "--max-new-tokens", 8)
    assert result.exit_code == 0, result.output
    assert "kept 128/256 FFN neurons per layer (50.0%)" in result.output
    assert "lambda=0.25" in result.output


def test_calibrate_self_generate(example_dir, tmp_path):
    out = tmp_path / "self.safetensors"
    result = run("calibrate", "--model", example_dir / "model", "--self-generate", 64, "--seq-len", 16, "--out", out)
    assert result.exit_code == 0, result.output
    assert '"kind": "self-generated"' in run("inspect", out, "--json").output
    # each pass's throughput, for sizing a real calibration
    assert "self-generating 64 tokens in" in result.output and "calibrating 64 tokens in" in result.output
    assert result.output.count("tokens/s)") == 2


@pytest.mark.parametrize("args, message", [
    (["--density", "1.5"], "not in the range"),
    (["--density", "0"], "not in the range"),
    (["--method", "a-glass", "--lambda", "2"], "not in the range"),
    (["--method", "nope"], "'nope' is not one of"),
])
def test_generate_usage_errors_exit_2(example_dir, args, message):
    result = run("generate", "--model", example_dir / "model", "--prompt", "hi", *args)
    assert result.exit_code == 2 and message in result.output


def test_generate_refusals_exit_1(example_dir, priors_file, tmp_path):
    model = example_dir / "model"
    cases = [
        (["--model", model, "--method", "griffin", "--prompt", "   "], "prompt is empty"),
        (["--model", tmp_path / "nope", "--method", "griffin", "--prompt", "hi"], "does not exist"),
        (["--model", model, "--method", "i-glass", "--prompt", "hi"], "needs global priors"),
        (["--model", model, "--method", "griffin", "--lambda", "0.5", "--prompt", "hi"], "does not apply"),
        (["--model", model, "--method", "i-glass", "--lambda", "0.12345", "--priors", priors_file, "--prompt", "hi"],
         "multiple of 0.001"),
    ]
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(priors_file.read_bytes()[:100])
    cases.append((["--model", model, "--priors", truncated, "--prompt", "hi"], "not a valid glass-export priors"))
    other = tmp_path / "other"
    assert run("example", "--out", other, "--seed", 1).exit_code == 0
    cases.append((["--model", other / "model", "--priors", priors_file, "--prompt", "hi"], "another model"))
    for args, message in cases:
        result = run("generate", *args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "fix:" in result.output, (args, result.output)


def test_calibrate_refusals_leave_no_output(example_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for args, message in [
        (["--data", empty], "corpus is empty"),
        (["--data", example_dir / "corpus.txt", "--seq-len", 100000], "shorter than one sequence"),
        ([], "exactly one of --data and --self-generate"),
    ]:
        result = run("calibrate", "--model", example_dir / "model", *args, "--out", out_dir / "p.safetensors")
        assert result.exit_code == 1 and message in result.output, result.output
        assert list(out_dir.iterdir()) == []


def test_example_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = run("example", "--out", tmp_path)
    assert result.exit_code == 1 and "not empty" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_chat_wraps_the_prompt_in_the_tokenizer_template(example_dir, tokenizer):
    from glass_export.prompts import encode_prompt

    plain = run("generate", "--model", example_dir / "model", "--method", "dense", "--chat", "--prompt", "Hi")
    assert plain.exit_code == 1 and "no chat template" in plain.output

    templated = tokenizer.__class__.from_pretrained(example_dir / "model")
    templated.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}{{ '<s>' }}"
    ids = encode_prompt(templated, "The sea", chat=True)
    assert ids == templated("<s>The sea</s><s>", add_special_tokens=False)["input_ids"]
    assert ids != encode_prompt(templated, "The sea")


@pytest.mark.parametrize("width", [80, 120])
def test_verify_table_fits_the_terminal_and_shows_the_prompts(monkeypatch, capsys, width):
    from rich.console import Console

    import glass_export.cli as cli

    long_prompt = "Give three tips for learning a new language, with examples."
    rows = [{"prompt": prompt, "prompt_tokens": 37, "prefill_max_abs_diff": 1e-5, "step_max_abs_diff": [3e-5],
             "selection": selection, "indices_differing": 2, "first_token_mismatch": None, "tokens_compared": 16,
             "tokens_expected": 16, "near_ties": [3], "passed": True}
            for prompt, selection in ((long_prompt, "identical"), ("Why is the\nsky blue?", "ties only"))]
    report = {"prompts": rows, "selection_summary": {"identical": 1, "ties only": 1, "mismatch": 0},
              "runs_on": "onnx, native kernels", "tolerance": {"mode": "exact", "describe": "atol 0.0001"},
              "passed": True}
    monkeypatch.setattr(cli, "Console", lambda *args, **kwargs: Console(width=width, force_terminal=False))
    cli.print_verify_table(report)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= width
    assert any("Why is the sky blue?" in line and "2 tie swaps" in line for line in lines)  # whole, on one line
    cut = next(line for line in lines if "Give three tips" in line)
    assert ("…" in cut) == (width == 80) and "16/16, 1 near-tie" in cut
