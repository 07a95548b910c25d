"""The bad-input table: every command, every class of bad or unusual input.

Each case asserts the exit code (1: refused input, 2: usage error), a message without a Python
traceback, and that nothing outside the command's own output changed (every file under the test's
root is hashed before and after). The two data-loss reports that opened this table
(`export --out . --force` inside a folder, `export --out MODEL --force`) are its first rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glass_export.cli import main
from glass_export.errors import GlassExportError
from glass_export.outputs import OutputPlan


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, example_dir):
    """A folder as a user has it: the example model, a corpus, priors, an artifact, an eval folder."""
    root = tmp_path_factory.mktemp("workspace")
    shutil.copytree(example_dir / "model", root / "model")
    shutil.copy(example_dir / "corpus.txt", root / "corpus.txt")
    runner = CliRunner()
    for args in (["calibrate", "--model", root / "model", "--data", root / "corpus.txt", "--seq-len", 32,
                  "--max-tokens", 256, "--out", root / "priors.safetensors"],
                 ["export", "--model", root / "model", "--method", "griffin", "--max-seq-len", 32, "--out",
                  root / "artifact"],
                 ["eval", "--model", root / "model", "--methods", "griffin", "--densities", "0.5", "--max-new-tokens", 3,
                  "--prompts", root / "corpus.txt", "--out", root / "evaluation"]):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("my own file")
    (root.parent / "home").mkdir(exist_ok=True)
    return root


def run_in(cwd: Path, *args):
    """The CLI as a user runs it from cwd (a real process: no state shared with the test)."""
    result = subprocess.run([sys.executable, "-m", "glass_export.cli", *map(str, args)], cwd=cwd, capture_output=True,
                            text=True, env={**os.environ, "HOME": str(cwd.parent / "home")})
    return result.returncode, result.stdout + result.stderr


def damaged(workspace: Path, tmp: Path, what: str) -> Path:
    """A copy of the model (or artifact) with one kind of damage."""
    if what.startswith("artifact"):
        copy = tmp / what
        shutil.copytree(workspace / "artifact", copy)
        manifest = copy / "glass.json"
        if what == "artifact-binary-manifest":
            manifest.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
        elif what == "artifact-incomplete-manifest":
            manifest.write_text(manifest.read_text()[:300])
        return copy
    copy = tmp / what
    shutil.copytree(workspace / "model", copy)
    weights = copy / "model.safetensors"
    if what == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif what == "garbage-weights":
        weights.write_bytes(os.urandom(4096))
    elif what == "pickle-only":
        weights.rename(copy / "pytorch_model.bin")
    elif what == "config-mismatch":
        config = json.loads((copy / "config.json").read_text())
        config["intermediate_size"] = 128
        (copy / "config.json").write_text(json.dumps(config))
    elif what == "tokenizer-wrong-structure":
        (copy / "tokenizer.json").write_text(json.dumps({"model": {"type": "nonsense"}}))
    elif what == "tokenizer-not-json":
        (copy / "tokenizer.json").write_bytes(b"\xff\xfe not json")
    elif what == "hostile-chat-template":
        config = json.loads((copy / "tokenizer_config.json").read_text())
        config["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
        (copy / "tokenizer_config.json").write_text(json.dumps(config))
    return copy


# (case, command line built from the workspace root, expected exit code, message)
CASES = [
    # 1. overwrite safety: the two data-loss reports first
    ("export --out . --force inside a folder", lambda w, t: ["export", "--model", "model", "--method", "griffin",
                                                             "--out", ".", "--force"], 1, "is the current directory"),
    ("export --out MODEL --force", lambda w, t: ["export", "--model", w / "model", "--method", "griffin", "--out",
                                                 w / "model", "--force"], 1, "overlaps the input"),
    ("export --out inside the model", lambda w, t: ["export", "--model", w / "model", "--method", "griffin", "--out",
                                                    w / "model" / "art"], 1, "overlaps the input"),
    ("export --out the folder holding the model", lambda w, t: ["export", "--model", w / "model", "--method",
                                                                "griffin", "--out", w, "--force"], 1, "is the current directory"),
    ("export --out home --force", lambda w, t: ["export", "--model", w / "model", "--method", "griffin", "--out",
                                                w.parent / "home", "--force"], 1, "your home directory"),
    ("export --force over a user's folder", lambda w, t: ["export", "--model", w / "model", "--method", "griffin",
                                                          "--out", w / "notes", "--force"], 1, "not something glass-export wrote"),
    ("export --force over an eval folder", lambda w, t: ["export", "--model", w / "model", "--method", "griffin",
                                                         "--out", w / "evaluation", "--force"], 1, "it is a glass-export eval"),
    ("export over an existing artifact", lambda w, t: ["export", "--model", w / "model", "--method", "griffin",
                                                       "--out", w / "artifact"], 1, "already exists"),
    ("calibrate over existing priors", lambda w, t: ["calibrate", "--model", w / "model", "--data", w / "corpus.txt",
                                                     "--seq-len", 32, "--out", w / "priors.safetensors"], 1, "already exists"),
    ("calibrate --force over a user's file", lambda w, t: ["calibrate", "--model", w / "model", "--data", w / "corpus.txt",
                                                           "--seq-len", 32, "--out", w / "notes" / "todo.txt", "--force"],
     1, "not something glass-export wrote"),
    ("calibrate --out the corpus", lambda w, t: ["calibrate", "--model", w / "model", "--data", w / "corpus.txt",
                                                 "--seq-len", 32, "--out", w / "corpus.txt", "--force"], 1, "overlaps the input"),
    ("example --force over a user's folder", lambda w, t: ["example", "--out", w / "notes", "--force"], 1,
     "not something glass-export wrote"),
    ("eval --out the model", lambda w, t: ["eval", "--model", w / "model", "--methods", "griffin", "--out", w / "model",
                                           "--force"], 1, "overlaps the input"),
    ("convert-gguf --out its own folder", lambda w, t: ["convert-gguf", w / "notes" / "todo.txt", "--out", w / "notes"],
     1, "not a GGUF file"),
    # 4. damaged inputs
    ("truncated weights", lambda w, t: ["generate", "--model", damaged(w, t, "truncated-weights"), "--method", "dense",
                                        "--prompt", "hi"], 1, "cannot load the model"),
    ("garbage weights", lambda w, t: ["generate", "--model", damaged(w, t, "garbage-weights"), "--method", "dense",
                                      "--prompt", "hi"], 1, "cannot load the model"),
    ("pickled weights only", lambda w, t: ["generate", "--model", damaged(w, t, "pickle-only"), "--method", "dense",
                                           "--prompt", "hi"], 1, "loads only safetensors"),
    ("config that does not match its weights", lambda w, t: ["generate", "--model", damaged(w, t, "config-mismatch"),
                                                             "--method", "dense", "--prompt", "hi"], 1, "do not match config.json"),
    ("tokenizer.json of the wrong structure", lambda w, t: ["generate", "--model", damaged(w, t, "tokenizer-wrong-structure"),
                                                            "--method", "dense", "--prompt", "hi"], 1, "no usable tokenizer"),
    ("tokenizer.json that is not JSON", lambda w, t: ["generate", "--model", damaged(w, t, "tokenizer-not-json"),
                                                      "--method", "dense", "--prompt", "hi"], 1, "no usable tokenizer"),
    ("hostile chat template", lambda w, t: ["generate", "--model", damaged(w, t, "hostile-chat-template"), "--method",
                                            "dense", "--chat", "--prompt", "hi"], 1, "chat template failed"),
    ("non-UTF-8 prompts (text)", lambda w, t: ["verify", "--artifact", w / "artifact", "--model", w / "model",
                                               "--prompts", latin1(t, "p.txt")], 1, "is not UTF-8 text (line 2"),
    ("non-UTF-8 prompts (JSONL)", lambda w, t: ["verify", "--artifact", w / "artifact", "--model", w / "model",
                                                "--prompts", latin1(t, "p.jsonl", jsonl=True)], 1, "is not UTF-8 text"),
    ("non-UTF-8 corpus (text)", lambda w, t: ["calibrate", "--model", w / "model", "--data", latin1(t, "c.txt"),
                                              "--seq-len", 8, "--out", t / "p.safetensors"], 1, "is not UTF-8 text"),
    ("non-UTF-8 corpus (JSONL)", lambda w, t: ["calibrate", "--model", w / "model", "--data", latin1(t, "c.jsonl", jsonl=True),
                                               "--seq-len", 8, "--out", t / "p.safetensors"], 1, "is not UTF-8 text"),
    ("binary glass.json", lambda w, t: ["run", "--artifact", damaged(w, t, "artifact-binary-manifest"), "--prompt", "hi"],
     1, "is not UTF-8 text"),
    ("incomplete glass.json", lambda w, t: ["run", "--artifact", damaged(w, t, "artifact-incomplete-manifest"),
                                            "--prompt", "hi"], 1, "is not valid JSON"),
    ("missing model directory", lambda w, t: ["generate", "--model", t / "nope", "--method", "dense", "--prompt", "hi"],
     1, "does not exist"),
    ("missing corpus caught before loading", lambda w, t: ["calibrate", "--model", w / "model", "--data", t / "nope.txt",
                                                           "--out", t / "p.safetensors"], 1, "does not exist"),
    # 5. silent wrong results, now refused or stated
    ("calibrate --max-tokens below one sequence", lambda w, t: ["calibrate", "--model", w / "model", "--data",
                                                                w / "corpus.txt", "--max-tokens", 10, "--seq-len", 32,
                                                                "--out", t / "p.safetensors"], 1, "less than one sequence"),
    ("calibrate --self-generate below one sequence", lambda w, t: ["calibrate", "--model", w / "model", "--self-generate",
                                                                   10, "--seq-len", 32, "--out", t / "p.safetensors"],
     1, "less than one sequence"),
    ("quantised export to a target that cannot", lambda w, t: ["export", "--model", w / "model", "--method", "griffin",
                                                              "--target", "executorch", "--quant", "int8",
                                                              "--accuracy-level", "1", "--out", t / "never"], 1,
     "--accuracy-level 1 is not available"),
    ("quantised weights for the qnn target", lambda w, t: ["export", "--model", w / "model", "--method", "griffin",
                                                          "--target", "qnn", "--quant", "int4", "--out", t / "never"], 1,
     "quantises its graphs itself"),
    ("prefill buckets for a CPU target", lambda w, t: ["export", "--model", w / "model", "--method", "griffin",
                                                      "--prefill-buckets", "32", "--out", t / "never"], 1,
     "takes prompts of any length"),
    ("a prefill bucket without room to generate", lambda w, t: ["export", "--model", w / "model", "--method", "griffin",
                                                               "--target", "qnn", "--max-seq-len", 64,
                                                               "--prefill-buckets", "32,64", "--out", t / "never"], 1,
     "a bucket must be 1 .. max_seq_len - 1 (63)"),
    ("prefill buckets that are not numbers", lambda w, t: ["export", "--model", w / "model", "--target", "qnn",
                                                          "--prefill-buckets", "32,long", "--out", t / "never"], 2,
     "not a comma-separated list of int"),
    ("tune on prompts without splits", lambda w, t: ["tune", "--model", w / "model", "--priors", w / "priors.safetensors",
                                                    "--prompts", w / "corpus.txt", "--out", t / "tuned.safetensors"],
     1, "marks no prompt with a split"),
    ("tune --out the priors it reads", lambda w, t: ["tune", "--model", w / "model", "--priors", w / "priors.safetensors",
                                                    "--out", w / "priors.safetensors", "--force"], 1, "overlaps the input"),
    # usage errors
    ("density out of range", lambda w, t: ["export", "--model", w / "model", "--density", "1.5", "--out", t / "x"], 2,
     "not in the range"),
]


def latin1(tmp: Path, name: str, jsonl: bool = False) -> Path:
    path = tmp / name
    body = "Write a poem\n" + ('{"prompt": "Caf\xe9"}' if jsonl else "Caf\xe9 au lait\n\nMore text here")
    path.write_bytes(body.encode("latin-1"))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_table(case, workspace, tmp_path):
    name, build_args, code, message = case
    args = build_args(workspace, tmp_path)
    before = snapshot(workspace)
    status, output = run_in(workspace, *args)
    assert status == code, (name, output)
    assert message in output, (name, output)
    assert "Traceback" not in output, (name, output)
    assert snapshot(workspace) == before, name  # nothing outside the command's own output changed
    assert not [p for p in workspace.iterdir() if ".glass-tmp-" in p.name]


def test_force_replaces_an_earlier_output_of_the_same_kind(workspace, tmp_path):
    out = tmp_path / "art"
    base = ["export", "--model", workspace / "model", "--method", "griffin", "--max-seq-len", 32, "--out", out]
    assert run_in(workspace, *base)[0] == 0
    first = snapshot(out)
    status, output = run_in(workspace, *base, "--method", "dense", "--force")
    assert status == 0, output
    assert snapshot(out) != first and json.loads((out / "glass.json").read_text())["selection"]["method"] == "dense"


def test_a_writer_that_finds_its_target_written_meanwhile_fails_and_keeps_the_other(tmp_path):
    for kind in ("artifact", "priors"):
        target = tmp_path / kind
        plan = OutputPlan(target, kind)
        with pytest.raises(GlassExportError, match="written by another process"):
            if kind == "priors":
                with plan.file() as tmp:
                    tmp.write_text("mine")
                    target.write_text("theirs")
            else:
                with plan.directory() as tmp:
                    (tmp / "mine").write_text("mine")
                    target.mkdir()
                    (target / "theirs").write_text("theirs")
        assert (target.read_text() if kind == "priors" else (target / "theirs").read_text()) == "theirs"
        assert [p.name for p in tmp_path.iterdir() if ".glass-tmp-" in p.name] == []


def test_temporaries_of_a_killed_run_are_cleaned_by_the_next(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".art.glass-tmp-{dead.pid}-abcd1234"
    stale.mkdir()
    (stale / "prefill.onnx").write_text("half written")
    live = tmp_path / f".art.glass-tmp-{os.getpid()}-abcd1234"  # a writer still running: left alone
    live.mkdir()
    OutputPlan(tmp_path / "art", "artifact")
    assert not stale.exists() and live.exists()


def test_generate_past_the_models_positions_is_capped_and_said(workspace):
    config = json.loads((workspace / "model" / "config.json").read_text())
    status, output = run_in(workspace, "generate", "--model", workspace / "model", "--method", "dense", "--prompt",
                            "The", "--max-new-tokens", config["max_position_embeddings"] + 50)
    assert status == 0, output
    assert "exceeds the model's" in output and "generating at most" in output


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(density=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6)),
       lam=st.one_of(st.floats(allow_nan=True), st.text(max_size=6)),
       max_seq_len=st.one_of(st.integers(-10**6, 10**6), st.text(max_size=6)),
       group=st.sampled_from(["16", "32", "48", "-1", "x"]),
       out=st.sampled_from([".", "..", "model", "model/x", "", "notes", "/", "~"]))
def test_export_options_never_crash_or_destroy(workspace, density, lam, max_seq_len, group, out):
    """Whatever the numbers and paths, export exits 0, 1 or 2 without a traceback and leaves the workspace as it was."""
    before = snapshot(workspace)
    args = ["export", "--model", str(workspace / "model"), "--method", "a-glass", "--priors",
            str(workspace / "priors.safetensors"), "--density", str(density), "--lambda", str(lam),
            "--max-seq-len", str(max_seq_len), "--group-size", group, "--quant", "int4", "--out", out]
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        result = CliRunner().invoke(main, args)
    finally:
        os.chdir(cwd)
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    after = snapshot(workspace)
    if result.exit_code == 0:  # the only change: a new artifact of its own at --out
        assert set(before) <= set(after) and all(before[k] == after[k] for k in before)
        shutil.rmtree(workspace / out)
    else:
        assert after == before
