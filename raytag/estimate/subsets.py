"""Task subsets: seeded balanced sampling, user-given subsets, and the validation design.

A batch of subsets is an int64 array ``[m, s]``: each row holds task indices in increasing
order; rows of user-given subsets with fewer than ``s`` tasks are padded with ``-1`` at the
end. Every consumer (estimators, affinity, metrics) goes through :func:`check_subsets` and
:func:`membership_matrix`, so the padding convention lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

PAD = -1


def sample_subsets(n_tasks: int, m: int = 2000, size: int = 10, seed: int = 0) -> np.ndarray:
    """Draw ``m`` subsets of ``size`` distinct tasks so every task is covered about equally.

    Each draw takes the ``size`` least-used tasks, breaking ties at random; the counts of any
    two tasks therefore never differ by more than one (consecutive draws partition shuffled
    task orders, like cutting random permutations into blocks), while pairs still co-occur at
    random — which the affinity matrix needs.
    """
    n_tasks, m, size = int(n_tasks), int(m), int(size)
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if m < 1:
        raise ValueError(f"number of subsets m must be >= 1, got {m}")
    if not 1 <= size <= n_tasks:
        raise ValueError(f"subset size must be between 1 and n_tasks={n_tasks}, got {size}")
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_tasks, dtype=np.int64)
    out = np.empty((m, size), dtype=np.int64)
    for row in range(m):  # m subsets (not samples): a few ms for thousands
        key = counts + rng.random(n_tasks)
        chosen = np.argpartition(key, size - 1)[:size] if size < n_tasks else np.arange(n_tasks)
        counts[chosen] += 1
        out[row] = np.sort(chosen)
    return out


def subsets_from_names(subsets: Sequence[Sequence[str]], names: Sequence[str]) -> np.ndarray:
    """Convert user-given subsets (lists of task names, e.g. from JSON) to a padded index array."""
    if isinstance(subsets, (str, bytes)) or not isinstance(subsets, Sequence):
        raise ValueError(f"subsets must be a list of lists of task names, got {type(subsets).__name__}")
    if len(subsets) == 0:
        raise ValueError("subsets is empty: give at least one list of task names")
    index = {name: i for i, name in enumerate(names)}
    rows = []
    for k, subset in enumerate(subsets):
        if isinstance(subset, (str, bytes)) or not isinstance(subset, Sequence):
            raise ValueError(f"subsets[{k}] must be a list of task names, got {subset!r}")
        if len(subset) == 0:
            raise ValueError(f"subsets[{k}] is empty: every subset needs at least one task")
        unknown = [name for name in subset if name not in index]
        if unknown:
            shown = ", ".join(map(repr, unknown[:5]))
            raise ValueError(f"subsets[{k}] names unknown tasks {shown}; known tasks are e.g. "
                             f"{', '.join(map(repr, list(names)[:5]))} ({len(names)} in all)")
        ids = [index[name] for name in subset]
        if len(set(ids)) != len(ids):
            raise ValueError(f"subsets[{k}] lists a task more than once: {list(subset)!r}")
        rows.append(sorted(ids))
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for k, ids in enumerate(rows):
        out[k, : len(ids)] = ids
    return out


def check_subsets(subsets, n_tasks: int) -> np.ndarray:
    """Validate a subset array (see module doc) and return it as int64 ``[m, s]``."""
    arr = np.asarray(subsets)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"subsets must be a non-empty 2-D array [m, s], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"subsets must hold integer task indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < PAD) | (arr >= n_tasks)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(f"subsets row {row} = {arr[row].tolist()} has task indices outside "
                         f"[0, {n_tasks}) (-1 is allowed only as end padding)")
    valid = arr != PAD
    if not valid[:, 0].all():
        row = int(np.flatnonzero(~valid[:, 0])[0])
        raise ValueError(f"subsets row {row} is empty or starts with padding: {arr[row].tolist()}")
    if (valid[:, 1:] & ~valid[:, :-1]).any():
        row = int(np.argwhere(valid[:, 1:] & ~valid[:, :-1])[0, 0])
        raise ValueError(f"subsets row {row} = {arr[row].tolist()} has padding (-1) before a task")
    sorted_arr = np.sort(np.where(valid, arr, n_tasks), axis=1)
    dup = (sorted_arr[:, 1:] == sorted_arr[:, :-1]) & (sorted_arr[:, 1:] < n_tasks)
    if dup.any():
        row = int(np.argwhere(dup)[0, 0])
        raise ValueError(f"subsets row {row} = {arr[row].tolist()} repeats a task")
    return arr


def membership_matrix(subsets: np.ndarray, n_tasks: int) -> np.ndarray:
    """Boolean ``[m, n]``: entry ``[k, t]`` says whether task ``t`` is in subset ``k``."""
    arr = np.asarray(subsets, dtype=np.int64)
    member = np.zeros((arr.shape[0], n_tasks + 1), dtype=bool)  # last column absorbs padding
    member[np.arange(arr.shape[0])[:, None], np.where(arr == PAD, n_tasks, arr)] = True
    return member[:, :n_tasks]


@dataclass(frozen=True)
class ValidationDesign:
    """Subsets for true fine-tuning, drawn from a pool of validated tasks.

    Every validated task appears in at least ``min_appearances`` subsets, so its
    within-task rank correlation is computed over enough points to mean something.
    """

    validated_tasks: np.ndarray  # [n_validated], sorted task indices
    subsets: np.ndarray  # [n_subsets, size], task indices (not pool positions)
    size: int
    seed: int
    min_appearances: int

    def appearances(self) -> np.ndarray:
        """How many subsets contain each validated task (aligned with ``validated_tasks``)."""
        return (self.subsets[:, :, None] == self.validated_tasks[None, None, :]).any(1).sum(0)

    def to_dict(self) -> dict:
        return {
            "validated_tasks": self.validated_tasks.tolist(),
            "subsets": self.subsets.tolist(),
            "n_subsets": int(self.subsets.shape[0]),
            "size": self.size,
            "seed": self.seed,
            "min_appearances": self.min_appearances,
            "appearances": self.appearances().tolist(),
        }


def validation_design(n_tasks: int, n_validated: int = 20, n_subsets: int = 40, size: int = 10,
                      seed: int = 0, min_appearances: int = 8) -> ValidationDesign:
    """Pick ``n_validated`` tasks at random and draw balanced subsets from that pool only."""
    if not 1 <= n_validated <= n_tasks:
        raise ValueError(f"n_validated must be between 1 and n_tasks={n_tasks}, got {n_validated}")
    if not 1 <= size <= n_validated:
        raise ValueError(f"validation subset size must be between 1 and n_validated={n_validated}, "
                         f"got {size}")
    # Balanced sampling gives every pool task floor(n_subsets * size / n_validated) or more.
    guaranteed = (n_subsets * size) // n_validated
    if guaranteed < min_appearances:
        raise ValueError(
            f"n_subsets={n_subsets} subsets of size={size} over n_validated={n_validated} tasks "
            f"put each task in only {guaranteed} subsets; need >= min_appearances={min_appearances}: "
            f"raise n_subsets or size, or lower n_validated")
    rng = np.random.default_rng(seed)
    pool = np.sort(rng.choice(n_tasks, size=n_validated, replace=False))
    local = sample_subsets(n_validated, n_subsets, size, seed=int(rng.integers(2**31)))
    return ValidationDesign(validated_tasks=pool, subsets=pool[local], size=size, seed=seed,
                            min_appearances=min_appearances)
