"""Anchor calibration: a few real fine-tunes fix each task's loss level.

The linearized estimate ranks subsets well for one task (which subset helps it more) but
carries a per-task bias in the *size* of the loss change: the network is not linear over a
whole fine-tune, and how far off it is depends on the task, not on the subset. A task's
predicted loss is therefore shifted by one constant: the gap between its real and its
estimated loss after fine-tuning on an *anchor* subset that contains it. The anchors
partition the tasks into subsets of the usual size, so they cost about as much as
``n_tasks / subset_size`` fine-tunes in all, and every task has exactly one.

A per-task constant leaves every within-task ranking, the affinity matrix (scores are
z-normalized per task) and source selection unchanged; it only corrects the predicted
losses themselves.
"""

from __future__ import annotations

import numpy as np


def anchor_subsets(n_tasks: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """A seeded partition of ``range(n_tasks)`` into ``ceil(n_tasks / size)`` subsets whose
    sizes differ by at most one (each sorted)."""
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if size < 1:
        raise ValueError(f"anchor subset size must be >= 1, got {size}")
    order = np.random.default_rng(seed).permutation(n_tasks)
    parts = np.array_split(order, -(-n_tasks // size))
    return [np.sort(part) for part in parts]


def anchor_offsets(anchors: list[np.ndarray], true_losses: np.ndarray, estimated_losses: np.ndarray,
                   n_tasks: int) -> np.ndarray:
    """Per-task offset ``[n_tasks]``: real minus estimated loss of each task after fine-tuning
    on its own anchor (row ``a`` of both ``[A, n_tasks]`` matrices belongs to ``anchors[a]``).

    Tasks without a finite loss on either side (no validation pairs) get 0.
    """
    true_losses = np.asarray(true_losses, dtype=np.float64)
    estimated_losses = np.asarray(estimated_losses, dtype=np.float64)
    expected = (len(anchors), n_tasks)
    if true_losses.shape != expected or estimated_losses.shape != expected:
        raise ValueError(f"true and estimated anchor losses must both be {expected}, got "
                         f"{true_losses.shape} and {estimated_losses.shape}")
    offsets = np.zeros(n_tasks)
    seen = np.zeros(n_tasks, dtype=bool)
    for row, tasks in enumerate(anchors):
        tasks = np.asarray(tasks, dtype=np.int64)
        if seen[tasks].any():
            raise ValueError(f"anchors must not share tasks; task(s) {tasks[seen[tasks]].tolist()} appear twice")
        seen[tasks] = True
        gap = true_losses[row, tasks] - estimated_losses[row, tasks]
        offsets[tasks] = np.where(np.isfinite(gap), gap, 0.0)
    return offsets
