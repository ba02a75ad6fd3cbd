"""Tasks (one binary community-membership label each) and their node splits.

Two regimes (see DESIGN.md, prepare):

- ``seeds``: the graph is the subgraph induced by the union of the chosen communities.
  Per task, ``seeds_per_task`` random members train, ``val_fraction`` of the members
  validate, the rest test; every non-member is a negative, split by
  ``negative_fractions`` (train, val, test). Few positives, many negatives: this is the
  regime where tasks interfere and grouping has something to fix.
- ``balanced``: the whole graph. Per task, its members (optionally capped at
  ``max_positives_per_task``) and ``negative_ratio`` x as many sampled non-members are
  each split 60/20/20 into train/val/test; all other nodes are unused (split 0) for it.

Every task draws from its own random stream ``(seed, task index)``, so a task's split
does not depend on how the other tasks were drawn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from raytag.data.graph import Graph
from raytag.data.loaders import DataError
from raytag.io import atomic_save_npz

UNUSED, TRAIN, VAL, TEST = 0, 1, 2, 3
REGIMES = ("seeds", "balanced")
BALANCED_FRACTIONS = (0.6, 0.2, 0.2)
_MIN_BALANCED_POSITIVES = 5


@dataclass(eq=False)
class TaskSet:
    """Row i of every per-node array is node ``nodes[i]`` (original id) = graph row i."""

    nodes: np.ndarray  # int64 [N]
    labels: np.ndarray  # uint8 [N, n]
    split: np.ndarray  # int8 [N, n]: 0 unused, 1 train, 2 val, 3 test
    names: list[str]
    regime: str

    @property
    def num_tasks(self) -> int:
        return len(self.names)

    @property
    def num_nodes(self) -> int:
        return int(self.nodes.size)

    def save(self, path: str | os.PathLike) -> None:
        atomic_save_npz(path, nodes=self.nodes, labels=self.labels, split=self.split,
                        names=np.asarray(self.names, dtype=str), regime=np.asarray(self.regime))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskSet:
        with np.load(path, allow_pickle=False) as archive:
            return cls(archive["nodes"], archive["labels"], archive["split"],
                       [str(name) for name in archive["names"]], str(archive["regime"]))

    def training_weights(self, balance_classes: bool) -> np.ndarray:
        """float32 [N, n]: 1 on each task's training rows, 0 elsewhere; with ``balance_classes``
        positives weigh (#train negatives / #train positives) so both classes weigh the same.
        With ~10 positives among ~26k negatives, an unweighted loss learns to answer "no"."""
        train = self.split == TRAIN
        weights = train.astype(np.float32)
        if balance_classes:
            positive = train & (self.labels == 1)
            ratio = (train & ~positive).sum(axis=0) / np.maximum(positive.sum(axis=0), 1)
            weights[positive] = np.broadcast_to(ratio.astype(np.float32), weights.shape)[positive]
        return weights

    def summary(self) -> dict:
        """Per-task sizes and split counts (for tasks.json)."""
        positive = self.labels.astype(bool)
        counts = {}
        for code, split_name in ((TRAIN, "train"), (VAL, "val"), (TEST, "test")):
            in_split = self.split == code
            counts[f"{split_name}_positives"] = (in_split & positive).sum(axis=0)
            counts[f"{split_name}_negatives"] = (in_split & ~positive).sum(axis=0)
        members = positive.sum(axis=0)
        tasks = [{"name": name, "members": int(members[t]), **{key: int(value[t]) for key, value in counts.items()}}
                 for t, name in enumerate(self.names)]
        return {"regime": self.regime, "num_nodes": self.num_nodes, "num_tasks": self.num_tasks, "tasks": tasks}


def build_tasks(
    graph: Graph,
    communities: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    num_tasks: int,
    regime: str,
    seeds_per_task: int = 10,
    val_fraction: float = 0.2,
    negative_fractions: tuple[float, float, float] = (0.2, 0.2, 0.6),
    negative_ratio: float = 1.0,
    max_positives_per_task: int | None = None,
    seed: int = 0,
) -> tuple[TaskSet, Graph]:
    """The ``num_tasks`` largest communities (ties: earlier first) as tasks, split by
    ``regime``. Returns the tasks and the graph their rows index (a subgraph for ``seeds``)."""
    if regime not in REGIMES:
        raise DataError(f"regime={regime!r}; allowed: {', '.join(REGIMES)}")
    if num_tasks < 1:
        raise DataError(f"num_tasks={num_tasks}; must be at least 1")
    names, members = _top_communities(communities, num_tasks)
    member_rows = []
    for name, ids in zip(names, members):
        try:
            member_rows.append(graph.index_of(ids))
        except DataError as error:
            raise DataError(f"community/label {name!r}: {error}") from None

    if regime == "seeds":
        _check_fractions("negative_fractions", negative_fractions)
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction={val_fraction}; must lie in (0, 1)")
        if seeds_per_task < 1:
            raise DataError(f"seeds_per_task={seeds_per_task}; must be at least 1")
        union = np.unique(np.concatenate(member_rows))
        graph = graph.induced(union)
        member_rows = [np.searchsorted(union, rows) for rows in member_rows]
    else:
        if negative_ratio <= 0:
            raise DataError(f"negative_ratio={negative_ratio}; must be positive")
        if max_positives_per_task is not None and max_positives_per_task < _MIN_BALANCED_POSITIVES:
            raise DataError(f"max_positives_per_task={max_positives_per_task}; must be at least "
                            f"{_MIN_BALANCED_POSITIVES} (or null for no cap)")

    num_nodes = graph.num_nodes
    labels = np.zeros((num_nodes, len(names)), dtype=np.uint8)
    split = np.zeros((num_nodes, len(names)), dtype=np.int8)
    for task, (name, rows) in enumerate(zip(names, member_rows)):
        rng = np.random.default_rng((seed, task))
        labels[rows, task] = 1
        if regime == "seeds":
            _split_seeds_task(split[:, task], rows, name, rng, seeds_per_task, val_fraction, negative_fractions)
        else:
            _split_balanced_task(split[:, task], rows, name, rng, negative_ratio, max_positives_per_task)
    return TaskSet(graph.node_ids.copy(), labels, split, names, regime), graph


def _top_communities(communities, num_tasks: int) -> tuple[list[str], list[np.ndarray]]:
    if isinstance(communities, Mapping):
        names = [str(name) for name in communities]
        members = [np.unique(np.asarray(ids, dtype=np.int64)) for ids in communities.values()]
    else:
        members = [np.unique(np.asarray(ids, dtype=np.int64)) for ids in communities]
        names = [f"c{index}" for index in range(len(members))]
    if len(members) < num_tasks:
        raise DataError(f"num_tasks={num_tasks} but only {len(members)} communities/labels were given; "
                        "lower num_tasks or supply more communities")
    order = np.argsort(-np.array([ids.size for ids in members]), kind="stable")[:num_tasks]
    return [names[i] for i in order], [members[i] for i in order]


def _split_seeds_task(column, rows, name, rng, seeds_per_task, val_fraction, negative_fractions) -> None:
    size = rows.size
    if size < seeds_per_task + 2:
        raise DataError(f"task {name!r} has {size} members; the seeds regime needs at least "
                        f"seeds_per_task + 2 = {seeds_per_task + 2} (lower seeds_per_task or num_tasks)")
    num_val = int(np.clip(round(val_fraction * size), 1, size - seeds_per_task - 1))
    positives = rng.permutation(rows)
    column[positives[:seeds_per_task]] = TRAIN
    column[positives[seeds_per_task:seeds_per_task + num_val]] = VAL
    column[positives[seeds_per_task + num_val:]] = TEST
    is_member = np.zeros(column.size, dtype=bool)
    is_member[rows] = True
    _assign(column, rng.permutation(np.flatnonzero(~is_member)), negative_fractions)


def _split_balanced_task(column, rows, name, rng, negative_ratio, max_positives) -> None:
    if rows.size < _MIN_BALANCED_POSITIVES:
        raise DataError(f"task {name!r} has {rows.size} members; the balanced regime needs at least "
                        f"{_MIN_BALANCED_POSITIVES} to split 60/20/20 (lower num_tasks)")
    positives = rng.permutation(rows)[:max_positives]
    non_members = column.size - rows.size
    num_negatives = min(int(round(negative_ratio * positives.size)), non_members)
    if num_negatives < _MIN_BALANCED_POSITIVES:
        raise DataError(f"task {name!r} leaves only {non_members} non-members to sample "
                        f"{num_negatives} negatives from; it covers (nearly) the whole graph")
    negatives = _nth_non_members(np.sort(rows), rng.choice(non_members, size=num_negatives, replace=False))
    _assign(column, positives, BALANCED_FRACTIONS)
    _assign(column, rng.permutation(negatives), BALANCED_FRACTIONS)


def _nth_non_members(sorted_members: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Rows of the ``ranks``-th non-members (0-based), without listing all non-members."""
    shifted = sorted_members - np.arange(sorted_members.size)
    return ranks + np.searchsorted(shifted, ranks, side="right")


def _assign(column: np.ndarray, shuffled_rows: np.ndarray, fractions) -> None:
    """Consecutive pieces of ``shuffled_rows`` -> train/val/test, sized by largest remainder."""
    counts = _apportion(shuffled_rows.size, fractions)
    bounds = np.cumsum(counts)
    column[shuffled_rows[:bounds[0]]] = TRAIN
    column[shuffled_rows[bounds[0]:bounds[1]]] = VAL
    column[shuffled_rows[bounds[1]:bounds[2]]] = TEST


def _apportion(total: int, fractions) -> np.ndarray:
    exact = np.asarray(fractions, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    leftover = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
    return counts


def _check_fractions(field: str, fractions) -> None:
    values = np.asarray(fractions, dtype=np.float64)
    if values.shape != (3,) or (values < 0).any() or not np.isclose(values.sum(), 1.0):
        raise DataError(f"{field}={tuple(fractions)}; need three non-negative (train, val, test) "
                        "fractions summing to 1")
