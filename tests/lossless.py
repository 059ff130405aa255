"""Exact distributions and goodness-of-fit tests shared by the losslessness tests of every draft family."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2


def exact_joint(model, prompt: list[int], n_tokens: int, temperature: float) -> np.ndarray:
    """Exact joint distribution [V]*n of the next n sampled tokens, by enumerating every prefix."""
    vocab = model.config.vocab_size
    prefixes: list[list[int]] = [[]]
    weights = torch.ones(1, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(n_tokens):
            logits = model(torch.tensor([prompt + p for p in prefixes])).logits[:, -1].double()
            weights = (weights[:, None] * torch.softmax(logits / temperature, -1)).reshape(-1)
            prefixes = [p + [v] for p in prefixes for v in range(vocab)]
    return weights.reshape([vocab] * n_tokens).numpy()


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square goodness of fit; cells expecting < 5 counts are pooled into one."""
    expected = probs / probs.sum() * counts.sum()
    small = expected < 5
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, len(expected) - 1))
