"""Spectral clustering of the affinity matrix, seeded k-means, and the random-grouping baseline.

All numpy/scipy (no sklearn): spectral clustering is both a baseline and the initializer of the
scalable path, so it must run at thousands of tasks in seconds.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from raytag.cluster.grouping import Grouping, check_affinity, check_k, labels_to_groups
from raytag.cluster.objective import grouping_objective


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_iter: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; best of ``n_init`` runs by inertia. Labels [n]."""
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    k = check_k(k, n)
    rng = np.random.default_rng(seed)
    sq_norms = (points**2).sum(1)
    best_labels, best_inertia = None, np.inf
    for _ in range(n_init):
        centers = _kmeans_plus_plus(points, sq_norms, k, rng)
        labels = np.full(n, -1)
        for _ in range(max_iter):
            dist = sq_norms[:, None] - 2 * points @ centers.T + (centers**2).sum(1)[None, :]
            new_labels = dist.argmin(1)
            counts = np.bincount(new_labels, minlength=k)
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                # Refill an empty cluster with the points farthest from their centers.
                far = np.argsort(-dist[np.arange(n), new_labels])[: len(empty)]
                new_labels[far] = empty
                counts = np.bincount(new_labels, minlength=k)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
            sums = np.zeros_like(centers)
            np.add.at(sums, labels, points)
            centers = sums / counts[:, None]
        inertia = float(np.maximum(dist[np.arange(n), labels], 0).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def _kmeans_plus_plus(points, sq_norms, k, rng) -> np.ndarray:
    n = points.shape[0]
    chosen = [int(rng.integers(n))]
    closest = np.maximum(sq_norms - 2 * points @ points[chosen[0]] + sq_norms[chosen[0]], 0)
    for _ in range(1, k):
        total = closest.sum()
        nxt = int(rng.choice(n, p=closest / total)) if total > 0 else int(rng.integers(n))
        chosen.append(nxt)
        closest = np.minimum(closest, np.maximum(sq_norms - 2 * points @ points[nxt] + sq_norms[nxt], 0))
    return points[chosen].copy()


def spectral_embedding(T: np.ndarray, k: int) -> np.ndarray:
    """Rows of the top-k eigenvectors of the normalized affinity, each scaled to unit length.

    T is shifted to be nonnegative (the objective is shift-invariant, a graph needs weights
    ≥ 0) and its diagonal dropped; top-k eigenvectors of D^-1/2 A D^-1/2 are the bottom-k of
    the normalized Laplacian (Ng, Jordan & Weiss).
    """
    A = T - T.min()
    np.fill_diagonal(A, 0.0)
    degree = A.sum(1)
    inv_sqrt = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    normalized = inv_sqrt[:, None] * A * inv_sqrt[None, :]
    vectors = top_eigenvectors(normalized, k)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def top_eigenvectors(M: np.ndarray, k: int) -> np.ndarray:
    """Eigenvectors [n, k] of the k largest eigenvalues of symmetric M: Lanczos (only
    matrix-vector products) when k is small against n, a dense partial eigh otherwise."""
    n = M.shape[0]
    if n > 200 and k < n // 4:
        _, vectors = scipy.sparse.linalg.eigsh(M, k=k, which="LA", v0=np.ones(n))
        return vectors
    _, vectors = scipy.linalg.eigh(M, subset_by_index=[n - k, n - 1])
    return vectors


def spectral_labels(T: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    return kmeans(spectral_embedding(T, k), k, seed=seed, n_init=n_init)


def spectral_grouping(T: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> Grouping:
    """Spectral clustering baseline (no refinement on the objective)."""
    start = time.perf_counter()
    T = check_affinity(T)
    k = check_k(k, T.shape[0])
    groups = labels_to_groups(spectral_labels(T, k, seed=seed, n_init=n_init))
    return Grouping(
        groups=groups,
        method="spectral",
        k=len(groups),
        objective=grouping_objective(T, groups),
        solver="numpy-eigh+kmeans",
        seconds=time.perf_counter() - start,
        extra={"seed": seed},
    )


def random_grouping(sizes: Sequence[int], n: int, seed: int = 0) -> list[list[int]]:
    """Random groups with the given sizes: the baseline a grouping must beat.

    When the sizes sum to n the groups partition the tasks (a random permutation cut into
    pieces); otherwise (overlapping groups) each group is drawn independently without
    replacement.
    """
    sizes = [int(s) for s in sizes]
    if not sizes or any(not 1 <= s <= n for s in sizes):
        raise ValueError(f"sizes: every group size must be in [1, {n}] (n tasks), got {sizes}")
    rng = np.random.default_rng(seed)
    if sum(sizes) == n:
        perm = rng.permutation(n)
        return [sorted(chunk.tolist()) for chunk in np.split(perm, np.cumsum(sizes)[:-1])]
    return [sorted(rng.choice(n, size=s, replace=False).tolist()) for s in sizes]
