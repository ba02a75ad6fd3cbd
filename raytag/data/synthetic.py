"""Planted overlapping communities with heavy-tailed degrees, at the paper's scale.

The 21M-edge, 500-task graph of Grad-TAG cannot be downloaded here, so this makes one
with the same shape: every node gets a power-law expected degree; community members spend
``p_in_fraction`` of it inside their communities (split evenly over them) and the rest,
like non-members, in a background graph. Inside a community and in the background, edges
are Chung-Lu draws (both endpoints picked proportionally to the remaining degree), so
degrees stay heavy-tailed and communities are much denser than the graph. All draws are
vectorized numpy from one seeded generator; with ``out_dir`` the edges stream to a SNAP
edge list in chunks, so memory stays bounded by the chunk size, not the edge count.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from raytag.data.loaders import DataError

EDGES_FILE = "edges.txt"
COMMUNITIES_FILE = "communities.txt"
_TOP_UP_ROUNDS = 6
_BACKGROUND_BATCH = 1 << 20  # fixed, so the edges do not depend on out_dir / chunk_edges


def generate_planted_graph(
    num_nodes: int,
    num_communities: int,
    avg_degree: float,
    *,
    community_size_range: tuple[int, int] = (20, 1000),
    community_size_exponent: float = 1.5,
    mean_memberships: float = 1.5,
    degree_exponent: float = 2.5,
    p_in_fraction: float = 0.8,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    chunk_edges: int = 2_000_000,
) -> tuple[np.ndarray | Path, list[np.ndarray]]:
    """About ``num_nodes * avg_degree / 2`` undirected edges over ids ``0..num_nodes-1``
    (every node has at least one edge) and ``num_communities`` overlapping communities.

    Community sizes follow a power law with ``community_size_exponent`` inside
    ``community_size_range``; ``mean_memberships`` is the mean number of communities a
    community member belongs to (1 = disjoint, larger = more overlap). Returns
    ``(edges [E, 2] int64, communities)``, or with ``out_dir`` ``(path of edges.txt,
    communities)`` after writing ``edges.txt`` (``u<TAB>v``) and ``communities.txt``
    (one community per line), which ``read_edge_list`` / ``read_communities`` read back.
    A few edges can repeat (drawn in two overlapping communities, or in a community and
    the background); ``Graph.from_edges`` merges them.
    """
    _check_arguments(num_nodes, num_communities, avg_degree, community_size_range, mean_memberships,
                     degree_exponent, p_in_fraction, chunk_edges)
    rng = np.random.default_rng(seed)
    weight = _power_law_degrees(num_nodes, avg_degree, degree_exponent, rng)
    communities = _plant_communities(num_nodes, num_communities, community_size_range,
                                     community_size_exponent, mean_memberships, rng)
    sink = _EdgeSink(num_nodes, out_dir, chunk_edges)

    memberships = np.bincount(np.concatenate(communities), minlength=num_nodes)
    background = weight.copy()
    for members in communities:
        inside = p_in_fraction * weight[members] / memberships[members]
        # Chung-Lu needs w_max^2 <= sum(w); a node cannot have more than size-1 co-members.
        cap = min(np.sqrt(inside.sum()), (members.size - 1) / 2)
        inside = np.minimum(inside, cap)
        background[members] -= inside
        target = min(int(round(inside.sum() / 2)), members.size * (members.size - 1) // 4)
        sink.add(_chung_lu_edges(members, inside, target, num_nodes, rng))

    background = np.maximum(background, 0.0)
    everyone = np.arange(num_nodes, dtype=np.int64)
    remaining = int(round(background.sum() / 2))
    while remaining > 0:
        batch = min(_BACKGROUND_BATCH, remaining)
        sink.add(_chung_lu_edges(everyone, background, batch, num_nodes, rng, top_up=False))
        remaining -= batch
    sink.add(_attach_isolated(sink.degree, communities, background, rng))
    return sink.close(communities), communities


def _check_arguments(num_nodes, num_communities, avg_degree, size_range, mean_memberships,
                     degree_exponent, p_in_fraction, chunk_edges) -> None:
    problems = []
    if num_nodes < 2:
        problems.append(f"num_nodes={num_nodes} (need >= 2)")
    if num_communities < 1:
        problems.append(f"num_communities={num_communities} (need >= 1)")
    if not 0 < avg_degree < num_nodes - 1:
        problems.append(f"avg_degree={avg_degree} (need 0 < avg_degree < num_nodes - 1)")
    if len(size_range) != 2 or not 2 <= size_range[0] <= size_range[1] <= num_nodes:
        problems.append(f"community_size_range={tuple(size_range)} (need 2 <= min <= max <= num_nodes)")
    if mean_memberships < 1:
        problems.append(f"mean_memberships={mean_memberships} (need >= 1)")
    if degree_exponent <= 2:
        problems.append(f"degree_exponent={degree_exponent} (need > 2 for a finite mean degree)")
    if not 0 <= p_in_fraction <= 1:
        problems.append(f"p_in_fraction={p_in_fraction} (need 0..1)")
    if chunk_edges < 1:
        problems.append(f"chunk_edges={chunk_edges} (need >= 1)")
    if problems:
        raise DataError("invalid synthetic graph settings: " + "; ".join(problems))


def _power_law_degrees(num_nodes: int, avg_degree: float, exponent: float, rng) -> np.ndarray:
    """Pareto expected degrees with density ~ d^-exponent, capped at the Chung-Lu limit
    sqrt(sum of degrees), rescaled to mean ``avg_degree``."""
    minimum = avg_degree * (exponent - 2) / (exponent - 1)
    weight = minimum * (1 - rng.random(num_nodes)) ** (-1 / (exponent - 1))
    weight = np.minimum(weight, np.sqrt(num_nodes * avg_degree))
    return weight * (avg_degree / weight.mean())


def _plant_communities(num_nodes, num_communities, size_range, size_exponent, mean_memberships, rng):
    """Power-law sizes; members drawn so each community node has ``mean_memberships``
    communities on average (every chosen node at least one)."""
    low, high = float(size_range[0]), float(size_range[1])
    u = rng.random(num_communities)
    if np.isclose(size_exponent, 1.0):
        sizes = low * (high / low) ** u
    else:
        a, b = low ** (1 - size_exponent), high ** (1 - size_exponent)
        sizes = (a + u * (b - a)) ** (1 / (1 - size_exponent))
    sizes = np.rint(sizes).astype(np.int64)
    num_members = int(round(sizes.sum() / mean_memberships))
    if num_members > num_nodes:
        raise DataError(f"the communities need {num_members} distinct members but num_nodes={num_nodes}; "
                        "lower community_size_range or num_communities, or raise mean_memberships")
    members = rng.choice(num_nodes, size=num_members, replace=False)
    slots = rng.permutation(np.concatenate([members, rng.choice(members, size=sizes.sum() - num_members)]))
    return [np.unique(part) for part in np.split(slots, np.cumsum(sizes)[:-1])]


def _chung_lu_edges(nodes, weight, target, num_nodes, rng, top_up: bool = True) -> np.ndarray:
    """``target`` distinct non-loop edges among ``nodes``, endpoints drawn proportionally to
    ``weight``; redraws the shortfall left by loops and duplicates when ``top_up``."""
    if target <= 0 or weight.sum() <= 0:
        return np.empty((0, 2), dtype=np.int64)
    cumulative = np.cumsum(weight)
    keys = np.empty(0, dtype=np.int64)
    for _ in range(_TOP_UP_ROUNDS if top_up else 1):
        draws = int((target - keys.size) * 1.1) + 8
        ends = nodes[np.searchsorted(cumulative, rng.random((draws, 2)) * cumulative[-1], side="right")
                     .clip(max=nodes.size - 1)]
        ends = ends[ends[:, 0] != ends[:, 1]]
        keys = np.union1d(keys, ends.min(axis=1) * num_nodes + ends.max(axis=1))
        if keys.size >= target:
            break
    if keys.size > target:
        keys = rng.choice(keys, size=target, replace=False)
    return np.stack(np.divmod(keys, num_nodes), axis=1)


def _attach_isolated(degree, communities, background, rng) -> np.ndarray:
    """One edge for every node the draws left without any: to a random co-member of its
    first community, or (non-members) to a node drawn by background weight."""
    isolated = np.flatnonzero(degree == 0)
    if isolated.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    slot_nodes = np.concatenate(communities)
    slot_community = np.repeat(np.arange(len(communities)), [c.size for c in communities])
    order = np.argsort(slot_nodes, kind="stable")
    position = np.searchsorted(slot_nodes[order], isolated)
    is_member = slot_nodes[order][np.minimum(position, order.size - 1)] == isolated
    sizes = np.array([c.size for c in communities])
    offsets = np.r_[0, np.cumsum(sizes)[:-1]]
    community = slot_community[order][np.minimum(position, order.size - 1)]
    pick = offsets[community] + rng.integers(0, sizes[community])
    partner = slot_nodes[pick]
    cumulative = np.cumsum(background + 1e-12)
    stranger = np.searchsorted(cumulative, rng.random(isolated.size) * cumulative[-1], side="right")
    partner = np.where(is_member, partner, np.minimum(stranger, degree.size - 1))
    # A node drawn as its own partner takes its id's neighbour instead.
    partner = np.where(partner == isolated, (isolated + 1) % degree.size, partner)
    return np.stack([isolated, partner], axis=1)


class _EdgeSink:
    """Collects edges in memory, or streams them to ``out_dir/edges.txt`` in chunks."""

    def __init__(self, num_nodes: int, out_dir, chunk_edges: int):
        self.degree = np.zeros(num_nodes, dtype=np.int64)
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.chunk_edges = chunk_edges
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.handle = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.temp_path = self.out_dir / f".{EDGES_FILE}.tmp"
            self.handle = open(self.temp_path, "wb")
            self.handle.write(f"# raytag planted graph: {num_nodes} nodes; u<TAB>v per line\n".encode())

    def add(self, edges: np.ndarray) -> None:
        if edges.size == 0:
            return
        self.degree += np.bincount(edges.ravel(), minlength=self.degree.size)
        self.buffer.append(edges)
        self.buffered += edges.shape[0]
        if self.handle is not None and self.buffered >= self.chunk_edges:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            edges = np.concatenate(self.buffer)
            separators = np.tile(np.array([ord("\t"), ord("\n")], dtype=np.uint8), edges.shape[0])
            self.handle.write(_format_ints(edges.ravel(), separators))
        self.buffer, self.buffered = [], 0

    def close(self, communities: list[np.ndarray]) -> np.ndarray | Path:
        if self.handle is None:
            return np.concatenate(self.buffer) if self.buffer else np.empty((0, 2), dtype=np.int64)
        self._flush()
        self.handle.close()
        edges_path = self.out_dir / EDGES_FILE
        os.replace(self.temp_path, edges_path)
        values = np.concatenate(communities)
        separators = np.full(values.size, ord("\t"), dtype=np.uint8)
        separators[np.cumsum([c.size for c in communities]) - 1] = ord("\n")
        temp = self.out_dir / f".{COMMUNITIES_FILE}.tmp"
        temp.write_bytes(_format_ints(values, separators))
        os.replace(temp, self.out_dir / COMMUNITIES_FILE)
        return edges_path


def _format_ints(values: np.ndarray, separators: np.ndarray) -> bytes:
    """Decimal text of non-negative ints, each followed by its separator byte (vectorized:
    a digit matrix with leading zeros masked out, instead of per-number Python formatting)."""
    width = len(str(int(values.max()))) if values.size else 1
    text = np.empty((values.size, width + 1), dtype=np.uint8)
    remaining = values.astype(np.int64, copy=True)
    for column in range(width - 1, -1, -1):
        remaining, digit = np.divmod(remaining, 10)
        text[:, column] = digit + ord("0")
    text[:, width] = separators
    num_digits = np.ones(values.size, dtype=np.int64)
    for k in range(1, width):
        num_digits += values >= 10**k
    keep = np.ones_like(text, dtype=bool)
    keep[:, :width] = np.arange(width) >= (width - num_digits)[:, None]
    return text[keep].tobytes()
