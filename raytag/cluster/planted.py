"""Planted-group affinity matrices and the adjusted Rand index: ground truth for tests and
benchmarks (sklearn is not a dependency, so ARI is computed here)."""

from __future__ import annotations

import numpy as np


def planted_affinity(
    n: int, k: int, noise: float = 0.5, gap: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric T with ``gap`` added inside k planted groups plus N(0, noise²) entries.

    Group sizes vary (±50% around n/k) so methods that assume equal sizes are not favoured.
    Returns ``(T, planted_labels)``.
    """
    if not 1 <= k <= n:
        raise ValueError(f"k: planted groups must be in [1, {n}], got {k}")
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, size=k)
    sizes = np.maximum(1, np.floor(weights / weights.sum() * n).astype(int))
    sizes[np.argmax(sizes)] += n - sizes.sum()
    labels = rng.permutation(np.repeat(np.arange(k), sizes))
    upper = np.triu(rng.normal(0.0, noise, size=(n, n)))
    T = upper + np.triu(upper, 1).T + gap * (labels[:, None] == labels[None, :])
    return T, labels


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Hubert & Arabie's ARI: 1 for identical partitions, ≈0 for independent ones."""
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape:
        raise ValueError(f"labels: shapes differ {labels_true.shape} vs {labels_pred.shape}")
    _, a = np.unique(labels_true, return_inverse=True)
    _, b = np.unique(labels_pred, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    index = pairs(table)
    row, col = pairs(table.sum(1)), pairs(table.sum(0))
    expected = row * col / pairs(np.array([len(a)], dtype=float))
    maximum = (row + col) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))
