"""Personalized PageRank from each task's training seeds: the non-learned baseline.

It is what an expert tries first for community membership from a few seed nodes, and on
DBLP ``seeds`` it scores ≈0.19 test AP — above every learned model measured so far — so
every groups report shows it beside the learned models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def column_normalized_adjacency(adj) -> sp.csr_matrix:
    """``A D^-1`` (each column sums to 1; columns of zero-degree nodes stay zero), float32 CSR."""
    if not sp.issparse(adj) or adj.ndim != 2 or adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adj must be a square scipy.sparse adjacency matrix, got {type(adj).__name__} {getattr(adj, 'shape', None)}")
    matrix = sp.csr_matrix(adj, dtype=np.float32)
    out_degree = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
    inverse = np.zeros_like(out_degree)
    np.divide(1.0, out_degree, out=inverse, where=out_degree > 0)
    return (matrix @ sp.diags(inverse.astype(np.float32))).tocsr()


def personalized_pagerank_scores(
    adj,
    seed_rows_per_task: Sequence[np.ndarray],
    alpha: float = 0.15,
    iters: int = 30,
) -> np.ndarray:
    """PPR vectors of all tasks at once, float32 [N, n] (column t = task t).

    Task t restarts, with probability ``alpha``, uniformly on its seed rows ``e_t``;
    otherwise it walks along ``W = A D^-1``. Power iteration from ``x = e_t``:
    ``x ← (1 − α) W x + α e_t``, all tasks as one sparse × dense [N, n] product per step.
    It converges to ``α (I − (1 − α) W)^-1 e_t``; the error shrinks like ``(1 − α)^iters``
    (0.8% of the mass after 30 steps at α=0.15). A walk that reaches a node without edges
    stops there (its mass is dropped), which does not change the ranking elsewhere much
    and keeps the operator linear.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"ppr alpha (restart probability) must be in (0, 1], got {alpha}")
    if iters < 0:
        raise ValueError(f"ppr iters must be >= 0, got {iters}")
    walk = column_normalized_adjacency(adj)
    num_nodes = walk.shape[0]
    restart = np.zeros((num_nodes, len(seed_rows_per_task)), dtype=np.float32)
    for task, rows in enumerate(seed_rows_per_task):
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size == 0:
            raise ValueError(f"seed_rows_per_task[{task}] is empty: every task needs at least one seed row")
        if rows[0] < 0 or rows[-1] >= num_nodes:
            raise ValueError(f"seed_rows_per_task[{task}] has rows outside [0, {num_nodes}): {rows[[0, -1]].tolist()}")
        restart[rows, task] = 1.0 / rows.size
    walk *= np.float32(1.0 - alpha)
    scores = restart.copy()
    restart *= np.float32(alpha)
    for _ in range(iters):
        scores = walk @ scores
        scores += restart
    return scores
