"""Task affinity from per-subset losses.

A task's score in a subset is its negative loss, z-normalized over the subsets that contain
the task — so tasks with different loss scales weigh the same, and only the *ranking of
subsets for that task* matters, which is what the estimators are validated on.
"""

from __future__ import annotations

import numpy as np

from raytag.estimate.subsets import check_subsets, membership_matrix


def _check_losses(losses, n_subsets: int, n_tasks: int) -> np.ndarray:
    losses = np.asarray(losses, dtype=np.float64)
    if losses.shape != (n_subsets, n_tasks):
        raise ValueError(f"losses must have shape (m, n) = ({n_subsets}, {n_tasks}) to match "
                         f"subsets and n_tasks, got {losses.shape}")
    return losses


def task_scores(subsets, losses, n_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [m, n], has_score [m, n])``: z-normalized negative loss where the task is in
    the subset and its loss is finite; 0 elsewhere (and 0 for a task whose losses are all equal)."""
    subsets = check_subsets(subsets, n_tasks)
    losses = _check_losses(losses, subsets.shape[0], n_tasks)
    has = membership_matrix(subsets, n_tasks) & np.isfinite(losses)
    score = np.where(has, -losses, 0.0)
    count = has.sum(0)
    mean = score.sum(0) / np.maximum(count, 1)
    centered = np.where(has, score - mean, 0.0)
    std = np.sqrt((centered ** 2).sum(0) / np.maximum(count, 1))
    return np.where(std > 0, centered / np.where(std > 0, std, 1.0), 0.0), has


def affinity_matrix(subsets, losses, n_tasks: int) -> np.ndarray:
    """``T [n, n]``: ``T[i, j]`` = mean over subsets containing i and j of task i's score,
    symmetrized as ``(T + Tᵀ)/2``; 0 for pairs never seen together. The diagonal is task i's
    mean score in singleton subsets ``{i}`` when ``subsets`` has any, else 0."""
    subsets = check_subsets(subsets, n_tasks)
    score, has = task_scores(subsets, losses, n_tasks)
    member = membership_matrix(subsets, n_tasks).astype(np.float64)
    together = has.T.astype(np.float64) @ member  # [i, j]: subsets where i is scored and j is in
    total = score.T @ member
    affinity = np.divide(total, together, out=np.zeros_like(total), where=together > 0)
    singleton = (member.sum(1) == 1)[:, None] & has
    n_single = singleton.sum(0)
    diagonal = np.divide(np.where(singleton, score, 0.0).sum(0), n_single,
                         out=np.zeros(n_tasks), where=n_single > 0)
    np.fill_diagonal(affinity, diagonal)
    return (affinity + affinity.T) / 2


def higher_order_surrogate(subsets, losses, n_tasks: int, l2: float = 1e-3) -> np.ndarray:
    """Per task i, a ridge regression of i's score on which other tasks are in the subset
    (over the subsets containing i, with an unpenalized intercept); ``C[i, j]`` = the
    coefficient of task j, symmetrized like :func:`affinity_matrix` (diagonal 0). Unlike the
    pairwise mean, each coefficient is adjusted for the other tasks it was drawn with."""
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0 (tasks never drawn with i make the fit singular), got {l2!r}")
    subsets = check_subsets(subsets, n_tasks)
    score, has = task_scores(subsets, losses, n_tasks)
    member = membership_matrix(subsets, n_tasks).astype(np.float64)
    coef = np.zeros((n_tasks, n_tasks))
    for i in range(n_tasks):  # one small (n x n) solve per task
        rows = has[:, i]
        if not rows.any():
            continue
        design = member[rows]  # column i is all ones: it is the intercept
        penalty = np.full(n_tasks, l2)
        penalty[i] = 0.0
        gram = design.T @ design + np.diag(penalty)
        beta = np.linalg.solve(gram, design.T @ score[rows, i])
        beta[i] = 0.0
        coef[i] = beta
    return (coef + coef.T) / 2
