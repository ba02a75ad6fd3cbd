"""The average within-group density every clustering method is scored by.

``f(groups) = Σ_g (1/|g|) Σ_{i,j∈g} T_ij = tr(T X)`` with ``X = Σ_g 1_g 1_gᵀ / |g|`` the
normalized cluster matrix — exactly what the SDP relaxes. Adding a constant c to every
entry of T adds ``c · Σ_g |g|`` (= c·n for a partition), so shifting T never changes which
partition with a given number of groups wins.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def grouping_objective(T: np.ndarray, groups: Sequence[Sequence[int]]) -> float:
    """Σ over groups of the group's summed affinity divided by its size (overlap allowed)."""
    T = np.asarray(T, dtype=np.float64)
    return float(sum(T[np.ix_(g, g)].sum() / len(g) for g in groups if len(g)))


def labels_objective(T: np.ndarray, labels: np.ndarray, k: int | None = None) -> float:
    """The same objective for a partition given as labels, in one pass of matrix algebra."""
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if k is None else k
    one_hot = np.zeros((len(labels), k))
    one_hot[np.arange(len(labels)), labels] = 1.0
    sizes = one_hot.sum(0)
    within = (one_hot * (np.asarray(T, dtype=np.float64) @ one_hot)).sum(0)
    return float((within[sizes > 0] / sizes[sizes > 0]).sum())


def cluster_matrix(groups: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """Normalized cluster matrix ``X = Σ_g 1_g 1_gᵀ / |g|`` (feasible for the SDP when disjoint)."""
    X = np.zeros((n, n))
    for g in groups:
        X[np.ix_(g, g)] += 1.0 / len(g)
    return X


def random_objective_expectation(T: np.ndarray, sizes: Sequence[int]) -> float:
    """Expected objective of a uniformly random partition with these group sizes (closed form).

    A group of size s holds s diagonal entries and s(s-1) ordered off-diagonal pairs, each a
    uniform draw, so its term is ``mean(diag) + (s-1)·mean(offdiag)``; no sampling needed.
    """
    T = np.asarray(T, dtype=np.float64)
    n = T.shape[0]
    diag_mean = float(np.trace(T)) / n
    off_mean = float((T.sum() - np.trace(T)) / (n * (n - 1))) if n > 1 else 0.0
    return float(sum(diag_mean + (s - 1) * off_mean for s in sizes))
