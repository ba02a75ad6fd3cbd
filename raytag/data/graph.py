"""An undirected, unweighted graph over original node ids, stored as a canonical CSR matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from raytag.data.loaders import DataError


@dataclass(frozen=True, eq=False)
class Graph:
    """``node_ids[i]`` is the original id of row i; ``adjacency`` is symmetric, binary
    (float32 ones, ready for sparse matmuls), without self loops or duplicate entries."""

    node_ids: np.ndarray  # int64 [N], sorted, unique
    adjacency: sp.csr_matrix  # [N, N]

    @classmethod
    def from_edges(cls, edges: np.ndarray, num_nodes_hint: int | None = None) -> Graph:
        """Build from an [E, 2] array of original ids (any direction, duplicates and self
        loops allowed). With ``num_nodes_hint`` the ids must already be ``0..hint-1``: they
        are used as rows directly (no relabelling sort) and isolated nodes are kept."""
        edges = np.asarray(edges)
        if edges.ndim != 2 or edges.shape[1] != 2:
            raise DataError(f"edges must have shape [E, 2], got {edges.shape}")
        edges = edges.astype(np.int64, copy=False)
        if num_nodes_hint is None:
            node_ids, rows = _relabel(edges)
        else:
            if edges.size and (edges.min() < 0 or edges.max() >= num_nodes_hint):
                raise DataError(f"num_nodes_hint={num_nodes_hint} but edge ids span "
                                f"[{edges.min()}, {edges.max()}]; ids must lie in [0, num_nodes_hint)")
            node_ids, rows = np.arange(num_nodes_hint, dtype=np.int64), edges
        return cls(node_ids, _symmetric_csr(rows[:, 0], rows[:, 1], node_ids.size))

    @property
    def num_nodes(self) -> int:
        return int(self.node_ids.size)

    @property
    def num_edges(self) -> int:
        """Undirected edges (each stored twice in ``adjacency``)."""
        return int(self.adjacency.nnz // 2)

    def index_of(self, original_ids: np.ndarray) -> np.ndarray:
        """Rows of the given original ids; DataError naming the ids the graph lacks."""
        original_ids = np.asarray(original_ids, dtype=np.int64)
        rows = np.minimum(np.searchsorted(self.node_ids, original_ids), max(self.num_nodes - 1, 0))
        found = self.node_ids[rows] == original_ids if self.num_nodes else np.zeros(original_ids.shape, bool)
        if not found.all():
            missing = np.unique(original_ids[~found])
            raise DataError(f"{missing.size} node id(s) not in the graph (e.g. {missing[:5].tolist()}); "
                            "labels and communities must name nodes of the edge list")
        return rows

    def induced(self, rows: np.ndarray) -> Graph:
        """Subgraph on the given rows (sorted and deduplicated, so ``node_ids`` stays sorted)."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        adjacency = self.adjacency[rows][:, rows].tocsr()
        adjacency.sort_indices()
        return Graph(self.node_ids[rows], adjacency)


def _relabel(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids and each endpoint's row. Ids that are small non-negative integers
    (the usual case) go through a lookup table, which is O(E) instead of a sort."""
    if edges.size and edges.min() >= 0 and edges.max() < max(1 << 22, 4 * edges.size):
        present = np.zeros(int(edges.max()) + 1, dtype=bool)
        present[edges] = True
        node_ids = np.flatnonzero(present)
        lookup = np.zeros(present.size, dtype=np.int64)
        lookup[node_ids] = np.arange(node_ids.size)
        return node_ids, lookup[edges]
    node_ids = np.unique(edges)
    return node_ids, np.searchsorted(node_ids, edges)


def _symmetric_csr(source: np.ndarray, target: np.ndarray, num_nodes: int) -> sp.csr_matrix:
    """Both directions, self loops dropped, duplicates merged (scipy's per-row sort, much
    faster than a global unique over edge keys), then every entry set to 1."""
    keep = source != target
    source, target = source[keep], target[keep]
    data = np.ones(2 * source.size, dtype=np.float32)
    adjacency = sp.coo_matrix((data, (np.concatenate([source, target]), np.concatenate([target, source]))),
                              shape=(num_nodes, num_nodes)).tocsr()
    adjacency.sum_duplicates()
    adjacency.data[:] = 1.0
    return adjacency
