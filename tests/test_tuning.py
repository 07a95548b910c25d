"""Prompt splits, the end-of-turn protocol, bootstrap intervals and `glass-export tune`, on tiny models."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from glass_export.cli import main
from glass_export.errors import GlassExportError
from glass_export.evaluation import (PromptScore, Protocol, RunResult, eager_backends, evaluate, paired_difference,
                                     score_prompt)
from glass_export.generation import Backend, PrefillResult, generate
from glass_export.models import model_info
from glass_export.priors import load_priors
from glass_export.prompts import read_prompt_set, read_prompts
from glass_export.quantization import QuantScheme
from glass_export.selection import DEFAULT_LAMBDA, SelectionConfig
from glass_export.tuning import lambda_for, recommend_densities

PROMPTS = [[1, 40, 71, 100, 5, 9], [1, 300, 12, 77, 150, 8, 22], [1, 7, 7, 200, 31]]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- prompt splits ---------------------------------------------------------------------------------

def test_shipped_instructions_split_into_two_disjoint_halves():
    tune, report, everything = (read_prompt_set(None, s) for s in ("tune", "report", "all"))
    assert len(tune) == len(report) == 32 and len(everything) == 64
    assert not set(tune) & set(report) and set(tune) | set(report) == set(everything)
    assert read_prompt_set(None) == report  # eval's default: the held-out half
    assert len(read_prompts(None)) == 8  # verify keeps its 8 short prompts


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_users_file_is_split_the_same_way_and_bad_splits_are_refused(tmp_path):
    good = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "split": "tune"}, {"prompt": "b", "split": "report"},
                                              {"instruction": "c", "split": "tune"}])
    assert read_prompt_set(good, "tune") == ["a", "c"] and read_prompt_set(good, "report") == ["b"]
    assert read_prompt_set(good) == ["a", "b", "c"]  # a user's file: all of it unless --split says otherwise
    text = tmp_path / "p.txt"
    text.write_text("one\ntwo\n")
    cases = [(text, "tune", "marks no prompt with a split"),
             (write_jsonl(tmp_path / "part.jsonl", [{"prompt": "a", "split": "tune"}, {"prompt": "b"}]), "report",
              "prompt 2 of"),
             (write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "split": "test"}]), "all", "has split 'test'"),
             (write_jsonl(tmp_path / "half.jsonl", [{"prompt": "a", "split": "tune"}]), "report",
              "no prompt in the 'report' split")]
    for path, split, message in cases:
        with pytest.raises(GlassExportError, match=message) as info:
            read_prompt_set(path, split)
        assert info.value.fix  # every refusal says how to fix it
    assert read_prompt_set(text, "all") == ["one", "two"]


# --- end of turn --------------------------------------------------------------------------------------

class AlwaysEos(Backend):
    """A backend whose most likely next token is always EOS (id 0), then 1, 2, ...."""

    description = "fake"
    max_seq_len = 1000
    logits = np.array([5.0, 4.0, 3.0, 2.0], dtype=np.float32)

    def _prefill(self, ids):
        return PrefillResult(np.tile(self.logits, (len(ids), 1)), np.zeros((1, 1), np.int64), np.zeros((1, 4)))

    def _decode(self, token, position, indices):
        return self.logits


def test_min_new_tokens_keeps_eos_out_until_then_and_keeps_the_logits_unmasked():
    assert generate(AlwaysEos(), [1, 2], 10, {0}).tokens == [0]
    result = generate(AlwaysEos(), [1, 2], 10, {0}, keep_logits=True, min_new_tokens=4)
    assert result.tokens == [1, 1, 1, 1, 0]  # the next best token until 4 are out, then EOS ends it
    assert all(np.argmax(logits) == 0 for logits in result.step_logits)  # scored on the model's own distribution


def test_eval_stops_at_eos_scores_up_to_it_and_counts_per_prompt(llama):
    backends = eager_backends(llama, None, QuantScheme(), model_info(llama))
    config = SelectionConfig("griffin", 0.5)
    free = [score_prompt(llama, backends(config), p, 14)[0].tokens for p in PROMPTS]
    eos = free[0][5]  # a token prompt 0 produces at step 5 (maybe earlier too)
    stop = free[0].index(eos)
    assert stop >= 2, "pick another step: the test needs EOS after the minimum"
    protocol = Protocol(14, 2, frozenset({eos}))
    (result,) = evaluate(llama, PROMPTS, [config], protocol, backends)
    first = result.per_prompt[0]
    assert first.ended_at_eos and first.tokens == stop  # positions 1..stop, the EOS position included
    for score, tokens in zip(result.per_prompt, free):
        if eos in tokens[:2]:
            continue  # the minimum changed this generation
        ends = eos in tokens
        assert score.tokens == (tokens.index(eos) if ends else len(tokens) - 1), (score, tokens)
        assert score.ended_at_eos == ends
    assert result.tokens == sum(s.tokens for s in result.per_prompt)
    assert result.ended_at_eos == sum(s.ended_at_eos for s in result.per_prompt)
    assert result.kl == pytest.approx(sum(s.kl * s.tokens for s in result.per_prompt) / result.tokens)
    # the minimum really holds EOS back: with min 8 prompt 0 runs past its first EOS
    (held,) = evaluate(llama, PROMPTS[:1], [config], Protocol(14, 8, frozenset({eos})), backends)
    assert held.per_prompt[0].tokens >= 8 - 1


# --- bootstrap ---------------------------------------------------------------------------------------

def run_of(kls, tokens=10, method="griffin"):
    scores = [PromptScore(tokens, kl, 2.0 + kl, False) for kl in kls]
    return RunResult(method, 0.5, None, 2.0, float(np.mean(kls)), tokens * len(kls), per_prompt=scores)


def test_the_paired_interval_removes_the_prompt_to_prompt_spread():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.1, 2.0, 40)  # prompts differ a lot
    shifted = paired_difference(run_of(base - 0.05), run_of(base))
    assert shifted["kl_difference"] == pytest.approx(-0.05)
    low, high = shifted["ci"]
    assert high - low < 1e-9 and low == pytest.approx(-0.05) and shifted["share_a_lower"] == 1.0
    noisy = paired_difference(run_of(base + rng.normal(0, 0.2, 40)), run_of(base))
    assert noisy["ci"][0] < noisy["kl_difference"] < noisy["ci"][1] and noisy["ci"][1] - noisy["ci"][0] > 0.05
    assert paired_difference(run_of(base + 0.01), run_of(base)) == paired_difference(run_of(base + 0.01), run_of(base))


def test_eval_runs_carry_intervals_that_contain_their_estimate(llama):
    backends = eager_backends(llama, None, QuantScheme(), model_info(llama))
    griffin, random = evaluate(llama, PROMPTS, [SelectionConfig("griffin", 0.5), SelectionConfig("random", 0.5)], 8,
                               backends)
    for r in (griffin, random):
        assert r.kl_ci[0] <= r.kl <= r.kl_ci[1] and r.perplexity_ci[0] <= r.perplexity <= r.perplexity_ci[1]
    assert random.kl_diff_vs_griffin == pytest.approx(random.kl - griffin.kl)
    assert random.kl_diff_vs_griffin_ci[0] <= random.kl_diff_vs_griffin <= random.kl_diff_vs_griffin_ci[1]


# --- tune --------------------------------------------------------------------------------------------

def test_recommended_density_is_the_lowest_within_the_budget():
    chosen = [RunResult("i-glass", 0.25, 0.5, 1.0, 0.9, 10), RunResult("i-glass", 0.5, 0.5, 1.0, 0.4, 10),
              RunResult("i-glass", 0.75, 0.5, 1.0, 0.2, 10)]
    assert recommend_densities(chosen, 0.5) == {"i-glass": 0.5}
    assert recommend_densities(chosen, 1.0) == {"i-glass": 0.25}
    assert recommend_densities(chosen, 0.1) == {"i-glass": None}


@pytest.fixture(scope="module")
def tuned(example_dir, tmp_path_factory):
    """`glass-export tune` on 3 + 3 prompts: (priors, tuned priors, report dir, prompts file, tune output)."""
    root = tmp_path_factory.mktemp("tune")
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": t, "split": s} for t, s in [
        ("The lighthouse keeper", "tune"), ("A river runs", "report"), ("Once upon a time", "tune"),
        ("The sea is", "report"), ("Write a poem", "tune"), ("Explain the tide", "report")]])
    priors = root / "priors.safetensors"
    assert run("calibrate", "--model", example_dir / "model", "--data", example_dir / "corpus.txt", "--seq-len", 32,
               "--out", priors).exit_code == 0
    out, report = root / "tuned.safetensors", root / "report"
    result = run("tune", "--model", example_dir / "model", "--priors", priors, "--prompts", prompts, "--lambdas",
                 "0.25,0.75", "--max-new-tokens", 6, "--hindsight", "--kl-budget", 1e6, "--report", report, "--out", out)
    assert result.exit_code == 0, result.output
    return priors, out, report, prompts, result.output


def test_tune_chooses_on_the_tune_split_and_reports_on_the_other(tuned, example_dir, tmp_path):
    priors, out, report, prompts, output = tuned
    data = json.loads((report / "results.json").read_text())
    sweep, held_out = data["runs"]["tune"], data["runs"]["report"]
    (entry,) = load_priors(out).tuning["chosen"]
    best = min(sweep, key=lambda r: (r["kl"], r["lam"]))
    assert (entry["method"], entry["density"], entry["lambda"]) == ("i-glass", 0.5, best["lam"])
    assert entry["tune_kl"] == best["kl"]
    mine = next(r for r in held_out if r["method"] == "i-glass" and r["lam"] == entry["lambda"])
    assert entry["report_kl"] == mine["kl"] and len(mine["per_prompt"]) == 3
    assert {r["method"] for r in held_out} == {"i-glass", "griffin", "static-i"}
    top = min(r["kl"] for r in held_out if r["method"] == "i-glass")
    assert entry["hindsight"]["report_kl"] == top and entry["hindsight"]["gap"] == pytest.approx(mine["kl"] - top)
    griffin = next(r for r in held_out if r["method"] == "griffin")
    assert entry["vs_griffin"]["kl_difference"] == pytest.approx(mine["kl"] - griffin["kl"])
    # the sweep really ran on the tune split: eval on that split gives the same number
    ev = tmp_path / "ev"
    assert run("eval", "--model", example_dir / "model", "--priors", out, "--prompts", prompts, "--split", "tune",
               "--methods", "i-glass", "--densities", 0.5, "--lambdas", "tuned", "--max-new-tokens", 6,
               "--out", ev).exit_code == 0
    (again,) = json.loads((ev / "results.json").read_text())["runs"]
    assert again["lam"] == entry["lambda"] and again["kl"] == pytest.approx(entry["tune_kl"], rel=1e-6)
    # the tensors are the input priors', untouched
    before, after = load_priors(priors), load_priors(out)
    assert after.impact.equal(before.impact) and after.activation.equal(before.activation) and not before.tuning
    assert f"chose lambda {entry['lambda']:g}" in output and "held-out" in output
    tuning = load_priors(out).tuning  # any KL fits a budget of 1e6: the one density swept is recommended
    assert tuning["recommended_density"] == {"i-glass": 0.5} and "meets it down to density 0.5" in output


def test_export_and_generate_use_the_tuned_lambda_unless_overridden(tuned, example_dir, tmp_path):
    _priors, out, _report, _prompts, _ = tuned
    lam = load_priors(out).tuning["chosen"][0]["lambda"]
    base = ["generate", "--model", example_dir / "model", "--priors", out, "--prompt", "The sea", "--max-new-tokens", 2]
    result = run(*base)
    assert result.exit_code == 0 and f"lambda {lam:g}: tuned by `glass-export tune`" in result.output, result.output
    assert f"lambda={lam:g}" in result.output  # and it is the lambda the selection used
    result = run(*base, "--lambda", 0.1)
    assert "lambda 0.1: from --lambda" in result.output and "lambda=0.1" in result.output
    art = tmp_path / "art"
    result = run("export", "--model", example_dir / "model", "--priors", out, "--method", "i-glass", "--max-seq-len",
                 32, "--out", art)
    assert result.exit_code == 0, result.output
    assert json.loads((art / "glass.json").read_text())["selection"]["lambda"] == lam
    assert "tuned: i-glass density 0.5" in run("inspect", out).output


def test_lambda_for_says_where_the_lambda_came_from(tuned):
    priors = load_priors(tuned[1])
    lam = priors.tuning["chosen"][0]["lambda"]
    assert lambda_for("i-glass", 0.5, None, priors, "t.safetensors")[0] == lam
    assert "the nearest to 0.3" in lambda_for("i-glass", 0.3, None, priors, "t")[1]
    assert lambda_for("a-glass", 0.5, None, priors, "t")[0] == DEFAULT_LAMBDA
    assert "no tuned lambda for a-glass" in lambda_for("a-glass", 0.5, None, priors, "t")[1]
    assert lambda_for("griffin", 0.5, None, priors, "t") == (None, None)


def test_tune_refuses_bad_input_and_writes_nothing(tuned, example_dir, tmp_path):
    priors, _out, _report, prompts, _ = tuned
    text = tmp_path / "p.txt"
    text.write_text("one\ntwo\n")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(priors.read_bytes()[:200])
    base = ["tune", "--model", example_dir / "model", "--max-new-tokens", 4]
    cases = [
        (["--priors", priors, "--prompts", text], 1, "marks no prompt with a split"),
        (["--priors", priors, "--prompts", prompts, "--methods", "griffin"], 1, "takes none"),
        (["--priors", priors, "--prompts", prompts, "--lambdas", "0.12345"], 1, "multiple of"),
        (["--priors", damaged, "--prompts", prompts], 1, "not a valid glass-export priors file"),
        (["--priors", priors, "--prompts", prompts, "--kl-budget", 0], 2, "not in the range"),
    ]
    for args, code, message in cases:
        target = tmp_path / "never.safetensors"
        result = run(*base, *args, "--out", target)
        assert result.exit_code == code and message in result.output, (args, result.output)
        assert "Traceback" not in result.output and not target.exists()
    result = run(*base, "--priors", priors, "--prompts", prompts, "--out", priors, "--force")
    assert result.exit_code == 1 and "overlaps the input" in result.output
    result = run(*base, "--priors", priors, "--prompts", prompts, "--report", example_dir, "--out", tmp_path / "x")
    assert result.exit_code == 1 and "--report" in result.output and not (tmp_path / "x").exists()
