"""GradEx-style source selection for one target task (pure numpy; no ray).

Given the target's estimated validation loss when trained with many random source subsets,
rank sources by their average effect, or pick them by greedy forward selection against the
estimator; and the two baselines GradEx compares against (gradient and representation
similarity). Everything returns plain dicts of lists/arrays so the CLI can dump JSON.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def sample_source_subsets(n_tasks: int, target: int, m: int, size: int, seed: int = 0) -> np.ndarray:
    """m random source subsets [m, size] (distinct sources, never the target), seeded."""
    _check_target(target, n_tasks)
    if not 1 <= size <= n_tasks - 1:
        raise ValueError(f"size: a source subset needs 1..{n_tasks - 1} sources (n_tasks - 1), got {size}")
    if m < 1:
        raise ValueError(f"m: number of subsets must be >= 1, got {m}")
    sources = np.delete(np.arange(n_tasks), target)
    keys = np.random.default_rng(seed).random((m, len(sources)))
    return np.sort(sources[np.argpartition(keys, size - 1, axis=1)[:, :size]], axis=1)


def rank_by_marginal_effect(subsets: np.ndarray, losses: np.ndarray, n_tasks: int, target: int) -> dict:
    """Effect of source j = mean target loss over subsets *without* j − mean over subsets *with* j.

    Positive = adding j lowers the target's loss (helps). Sources never sampled (or always
    sampled) have no estimate: effect NaN, ranked last. Returns ``{"ranking", "effect",
    "count_with"}`` where ranking lists source ids best first (target excluded).
    """
    subsets = np.asarray(subsets, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    _check_target(target, n_tasks)
    if subsets.ndim != 2 or losses.shape != (subsets.shape[0],):
        raise ValueError(f"subsets/losses: need subsets [m, s] and losses [m], got {subsets.shape} and {losses.shape}")
    if subsets.size and (subsets.min() < 0 or subsets.max() >= n_tasks):
        raise ValueError(f"subsets: task ids must be in [0, {n_tasks}), got range [{subsets.min()}, {subsets.max()}]")
    member = np.zeros((subsets.shape[0], n_tasks))
    member[np.arange(subsets.shape[0])[:, None], subsets] = 1.0
    count_with = member.sum(0)
    count_without = subsets.shape[0] - count_with
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_with = member.T @ losses / count_with
        mean_without = (1.0 - member).T @ losses / count_without
    effect = mean_without - mean_with
    effect[target] = np.nan
    return {"ranking": _rank(effect, target), "effect": effect, "count_with": count_with.astype(np.int64)}


def greedy_forward_selection(
    loss_fn: Callable[[list[int]], float],
    candidates: Sequence[int],
    budget: int,
    stop_when_no_gain: bool = True,
) -> dict:
    """Add, one at a time, the candidate whose addition lowers ``loss_fn`` most, up to ``budget``.

    ``loss_fn(sources)`` is the estimated target loss when trained with the target plus those
    sources (``loss_fn([])`` = target alone). Stops early when no candidate lowers the loss
    (unless ``stop_when_no_gain=False``). Returns ``{"selected", "losses", "gains",
    "base_loss", "evaluations"}``: losses[i] after adding selected[i], gains[i] = the drop it gave.
    """
    candidates = list(dict.fromkeys(int(c) for c in candidates))
    if budget < 1:
        raise ValueError(f"budget: number of sources to select must be >= 1, got {budget}")
    base = float(loss_fn([]))
    selected: list[int] = []
    losses: list[float] = []
    gains: list[float] = []
    current = base
    evaluations = 1
    remaining = candidates.copy()
    while remaining and len(selected) < budget:
        trial = np.array([loss_fn(selected + [c]) for c in remaining], dtype=np.float64)
        evaluations += len(remaining)
        best = int(np.argmin(trial))
        if stop_when_no_gain and trial[best] >= current:
            break
        gains.append(current - float(trial[best]))
        current = float(trial[best])
        selected.append(remaining.pop(best))
        losses.append(current)
    return {"selected": selected, "losses": losses, "gains": gains, "base_loss": base, "evaluations": evaluations}


def rank_by_gradient_cosine(target: int, mean_gradients: np.ndarray) -> dict:
    """Baseline: sources ranked by cosine of their mean (projected) gradient with the target's."""
    return _rank_by_cosine(target, mean_gradients, "mean_gradients")


def rank_by_representation_cosine(target: int, mean_embeddings: np.ndarray) -> dict:
    """Baseline: sources ranked by cosine of their mean trunk embedding with the target's."""
    return _rank_by_cosine(target, mean_embeddings, "mean_embeddings")


def random_sources(n_tasks: int, target: int, size: int, seed: int = 0) -> list[int]:
    """Baseline: ``size`` random sources (never the target)."""
    return sample_source_subsets(n_tasks, target, 1, size, seed=seed)[0].tolist()


def _rank_by_cosine(target: int, vectors: np.ndarray, field: str) -> dict:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"{field}: need an [n_tasks, dim] matrix, got shape {vectors.shape}")
    _check_target(target, vectors.shape[0])
    norms = np.linalg.norm(vectors, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = vectors @ vectors[target] / (norms * norms[target])
    cosine[target] = np.nan
    return {"ranking": _rank(cosine, target), "cosine": cosine}


def _rank(score: np.ndarray, target: int) -> list[int]:
    """Source ids by descending score, NaNs last, target excluded; ties by id."""
    order = np.lexsort((np.arange(len(score)), -np.nan_to_num(score, nan=-np.inf)))
    valid = [int(j) for j in order if j != target and not np.isnan(score[j])]
    return valid + [int(j) for j in order if j != target and np.isnan(score[j])]


def _check_target(target: int, n_tasks: int) -> None:
    if not 0 <= int(target) < n_tasks:
        raise ValueError(f"target: task index must be in [0, {n_tasks}), got {target}")
