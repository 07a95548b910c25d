"""Uncertainty of eval's metrics: a seeded, paired bootstrap over prompts.

Each resample draws the prompts with replacement (the same draw for every run, so comparisons
between runs are paired) and recomputes each run's metrics exactly as eval reports them: KL and
log-perplexity averaged over all scored positions of the drawn prompts. The interval is the
percentile interval of the resampled values. Prompts, not tokens, are the unit: tokens of one
generation are strongly correlated, prompts are independent draws of the task mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


@dataclass
class Resampled:
    """Per-resample metrics of one run: kl [R], perplexity [R]."""

    kl: np.ndarray
    perplexity: np.ndarray


def draws(prompts: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Prompt indices [resamples, prompts], the same for the same seed."""
    return np.random.default_rng(seed).integers(0, prompts, size=(resamples, prompts))


def resample(per_prompt: list, idx: np.ndarray) -> Resampled:
    """per_prompt: evaluation.PromptScore of every prompt, in prompt order."""
    tokens = np.array([p.tokens for p in per_prompt], dtype=np.float64)
    kl_sum = np.array([p.kl_sum for p in per_prompt])
    nll_sum = np.array([p.nll_sum for p in per_prompt])
    count = np.maximum(tokens[idx].sum(axis=1), 1.0)  # a draw of only unscored prompts counts as 0
    return Resampled(kl_sum[idx].sum(axis=1) / count, np.exp(nll_sum[idx].sum(axis=1) / count))


def interval(values: np.ndarray, level: float = LEVEL) -> list[float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]
