"""Selection against a direct, independent computation of ../shared/GLASS.md's formulas.

The reference below uses plain Python loops and exact fractions, nothing from
glass_export.selection.
"""

import math
import random
from fractions import Fraction

import pytest
import torch

from glass_export.errors import GlassExportError
from glass_export.selection import (
    LocalStats,
    SelectionConfig,
    keep_count,
    lambda_units,
    local_scores,
    ranks,
    select,
)


def ref_local_scores(z):
    """s_i = || column i of the row-normalised Z ||_2, zero rows left as zero."""
    rows = []
    for row in z:
        norm = math.sqrt(sum(v * v for v in row))
        rows.append([v / norm if norm > 0 else 0.0 for v in row])
    return [math.sqrt(sum(r[i] ** 2 for r in rows)) for i in range(len(z[0]))]


def ref_ranks(scores):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    rank = [0] * len(scores)
    for position, i in enumerate(order):
        rank[i] = position
    return rank


def ref_select(local, prior, lam, k):
    r_local = ref_ranks(local)
    r_global = ref_ranks(prior)
    lam = Fraction(lam).limit_denominator(1000)
    fused = [lam * r_local[i] + (1 - lam) * r_global[i] for i in range(len(local))]
    order = sorted(range(len(local)), key=lambda i: (fused[i], r_local[i], i))
    return sorted(order[:k])


def test_local_scores_match_reference():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(7, 13, generator=gen)
    z[3] = 0.0  # a zero row must not produce NaN
    got = local_scores(z)
    want = torch.tensor(ref_local_scores(z.tolist()))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(got).all()


def test_local_stats_accumulate_in_chunks_like_one_pass():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(2, 9, 11, generator=gen)  # [layers, T, m]
    stats = LocalStats(2, 11)
    for layer in range(2):
        stats.add(layer, z[layer, :4])
        stats.add(layer, z[layer, 4:].unsqueeze(0))  # batch dim is flattened away
    want = torch.stack([local_scores(z[layer]) for layer in range(2)])
    torch.testing.assert_close(stats.scores(), want, rtol=1e-6, atol=1e-6)


def test_ranks_break_ties_by_index():
    scores = torch.tensor([[0.5, 2.0, 0.5, 2.0, 1.0, 0.5]])
    assert ranks(scores)[0].tolist() == ref_ranks(scores[0].tolist()) == [3, 0, 4, 1, 2, 5]


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.3, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_fusion_matches_exact_reference(lam, density):
    rng = random.Random(f"{lam}-{density}")
    layers, m = 3, 40
    # Few distinct values: many ties in scores and in fused ranks.
    local = torch.tensor([[float(rng.randint(0, 6)) for _ in range(m)] for _ in range(layers)])
    prior = torch.tensor([[float(rng.randint(0, 6)) for _ in range(m)] for _ in range(layers)])
    method = {0.0: "static-i", 1.0: "griffin"}.get(lam, "i-glass")
    config = SelectionConfig(method, density, None if method != "i-glass" else lam)
    got = select(config, local, prior, m, layers)
    k = keep_count(density, m)
    assert got.shape == (layers, k)
    for layer in range(layers):
        want = ref_select(local[layer].tolist(), prior[layer].tolist(), lam, k)
        assert got[layer].tolist() == want, f"layer {layer}"


def test_lambda_zero_is_independent_of_the_prompt_and_one_ignores_the_prior():
    gen = torch.Generator().manual_seed(3)
    prior = torch.rand(2, 50, generator=gen)
    local_a, local_b = torch.rand(2, 50, generator=gen), torch.rand(2, 50, generator=gen)
    static = SelectionConfig("static-a", 0.3)
    assert torch.equal(select(static, local_a, prior, 50, 2), select(static, local_b, prior, 50, 2))
    griffin = SelectionConfig("griffin", 0.3)
    assert torch.equal(select(griffin, local_a, prior, 50, 2), select(griffin, local_a, torch.rand(2, 50), 50, 2))
    # lambda = 1 through a-glass is exactly griffin, lambda = 0 exactly static-a.
    assert torch.equal(select(SelectionConfig("a-glass", 0.3, 1.0), local_a, prior, 50, 2), select(griffin, local_a, None, 50, 2))
    assert torch.equal(select(SelectionConfig("a-glass", 0.3, 0.0), local_a, prior, 50, 2), select(static, local_b, prior, 50, 2))


def test_keep_count_rounds_half_up_and_refuses_empty_masks():
    assert keep_count(0.5, 5) == 3  # round half up, not to even
    assert keep_count(0.25, 10) == 3
    assert keep_count(1.0, 7) == 7
    with pytest.raises(GlassExportError, match="keeps no neuron"):
        keep_count(0.01, 10)
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(GlassExportError, match="density"):
            keep_count(bad, 10)


def test_lambda_validation():
    assert lambda_units(0.3) == 300
    for bad in (-0.1, 1.5):
        with pytest.raises(GlassExportError, match=r"\[0, 1\]"):
            lambda_units(bad)
    with pytest.raises(GlassExportError, match="multiple of 0.001"):
        lambda_units(0.12345)
    with pytest.raises(GlassExportError, match="does not apply"):
        SelectionConfig("griffin", 0.5, 0.3)
    with pytest.raises(GlassExportError, match="(?s)unknown method.*a-glass"):
        SelectionConfig("glass", 0.5)


def test_random_is_seeded_sorted_and_distinct():
    one = select(SelectionConfig("random", 0.5, seed=7), None, None, 20, 3)
    assert torch.equal(one, select(SelectionConfig("random", 0.5, seed=7), None, None, 20, 3))
    assert not torch.equal(one, select(SelectionConfig("random", 0.5, seed=8), None, None, 20, 3))
    for row in one.tolist():
        assert row == sorted(set(row)) and len(row) == 10


def test_methods_that_need_a_prior_say_so():
    with pytest.raises(GlassExportError, match="needs global priors"):
        select(SelectionConfig("i-glass", 0.5), torch.rand(1, 8), None, 8, 1)


def test_graph_ranking_breaks_ties_by_index_like_ranks():
    """The exported graphs rank local scores with a top-k, whose order of equal values differs between
    runtimes; ranks_by_topk ranks tie-free keys instead and must equal ranks() exactly."""
    from glass_export.selection import ranks_by_topk

    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        scores = torch.rand(3, 1536, generator=gen)
        scores[:, torch.randint(0, 1536, (300,), generator=gen)] = float(scores[0, 0])  # exact ties
        scores[:, torch.randint(0, 1536, (50,), generator=gen)] = 0.0
        scores[1] *= 1e-30  # tiny and subnormal scores
        assert torch.equal(ranks_by_topk(scores), ranks(scores))
