"""The result every clustering method returns, and conversions between groups and labels.

One result type means the CLI, the report and the benchmark never care which method ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Grouping:
    """Groups of task indices plus how they were found.

    ``objective`` is :func:`raytag.cluster.objective.grouping_objective` of ``groups`` on the
    affinity matrix that was clustered, so values from different methods compare directly.
    """

    groups: list[list[int]]
    method: str
    k: int
    objective: float
    solver: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        """``groups.json`` content: groups as task names, then the run facts and ``extra``."""
        n_named = len(names)
        out_of_range = [i for g in self.groups for i in g if not 0 <= i < n_named]
        if out_of_range:
            raise ValueError(
                f"names: {n_named} names given but groups use task index {max(out_of_range)}; "
                "pass one name per row of the affinity matrix"
            )
        return {
            "groups": [[names[i] for i in g] for g in self.groups],
            "method": self.method,
            "k": self.k,
            "objective": self.objective,
            "solver": self.solver,
            "seconds": self.seconds,
            **self.extra,
        }


def check_affinity(T: np.ndarray) -> np.ndarray:
    """Return ``T`` as float64 after checking it is a finite, symmetric, square matrix."""
    T = np.asarray(T, dtype=np.float64)
    if T.ndim != 2 or T.shape[0] != T.shape[1] or T.shape[0] < 1:
        raise ValueError(f"T: affinity must be a non-empty square n x n matrix, got shape {T.shape}")
    if not np.isfinite(T).all():
        raise ValueError(f"T: affinity has {int((~np.isfinite(T)).sum())} non-finite entries; all must be finite")
    scale = max(float(np.abs(T).max()), 1e-12)
    asym = float(np.abs(T - T.T).max())
    if asym > 1e-8 * scale:
        raise ValueError(
            f"T: affinity must be symmetric (max |T - T.T| = {asym:.3g}); symmetrize it first, "
            "e.g. (T + T.T) / 2"
        )
    return T


def check_k(k: int, n: int) -> int:
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k: number of groups must be an integer in [1, {n}] (n tasks), got {k!r}")
    return int(k)


def groups_to_labels(groups: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """Labels [n] of a disjoint grouping that covers every task."""
    labels = np.full(n, -1, dtype=np.int64)
    for g, members in enumerate(groups):
        members = np.asarray(members, dtype=np.int64)
        if (labels[members] >= 0).any():
            raise ValueError("groups: a task appears in two groups; labels need a disjoint grouping")
        labels[members] = g
    if (labels < 0).any():
        raise ValueError(f"groups: tasks {np.flatnonzero(labels < 0)[:10].tolist()} are in no group")
    return labels


def labels_to_groups(labels: np.ndarray) -> list[list[int]]:
    """Non-empty groups from labels, ordered by their smallest task index (a canonical order)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    _, starts = np.unique(labels[order], return_index=True)
    groups = [chunk.tolist() for chunk in np.split(order, starts[1:])]
    return sorted(groups, key=lambda g: g[0])
