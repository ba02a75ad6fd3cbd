"""The (node, task) rows that projection, estimation and the true fine-tunes work on.

In the ``seeds`` regime a task has ~10 training positives and tens of thousands of
training negatives; storing a gradient for every negative of every task would dominate
the store. So each task keeps all its train/val positives and a uniform sample of at most
``negatives_per_split`` negatives per split, each sampled negative weighted by
(#negatives in that split) / (#sampled): weighted sums over the sample are unbiased
estimates of the sums over the full split (and exact for the negative count).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from raytag.data.loaders import DataError
from raytag.data.tasks import TRAIN, VAL, TaskSet
from raytag.io import atomic_save_npz

_FIELDS = ("node", "task", "split", "label", "weight")


@dataclass(eq=False)
class Pairs:
    """Parallel arrays of length P, sorted by (task, split, node)."""

    node: np.ndarray  # int64 TaskSet row
    task: np.ndarray  # int32
    split: np.ndarray  # int8: 1 train, 2 val
    label: np.ndarray  # float32 0/1
    weight: np.ndarray  # float32: 1 for positives, #negatives / #sampled for sampled negatives

    def __len__(self) -> int:
        return int(self.node.size)

    def save(self, path: str | os.PathLike) -> None:
        atomic_save_npz(path, **{name: getattr(self, name) for name in _FIELDS})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Pairs:
        with np.load(path, allow_pickle=False) as archive:
            return cls(*(archive[name] for name in _FIELDS))


def build_pairs(taskset: TaskSet, *, negatives_per_split: int = 1000, seed: int = 0,
                balance_classes: bool = False) -> Pairs:
    """All train/val positives of every task plus at most ``negatives_per_split`` uniformly
    sampled negatives per (task, split); each task samples from its own stream (seed, task).

    ``balance_classes`` weights each positive by (#negatives / #positives) of its split, so
    both classes carry equal total weight (see ``TaskSet.training_weights``)."""
    if negatives_per_split < 1:
        raise DataError(f"negatives_per_split={negatives_per_split}; must be at least 1")
    parts = []
    for task in range(taskset.num_tasks):
        rng = np.random.default_rng((seed, task))
        split_column, label_column = taskset.split[:, task], taskset.labels[:, task]
        for split_code in (TRAIN, VAL):
            in_split = split_column == split_code
            positives = np.flatnonzero(in_split & (label_column == 1))
            negatives = np.flatnonzero(in_split & (label_column == 0))
            sampled = np.sort(rng.choice(negatives, size=min(negatives_per_split, negatives.size), replace=False))
            negative_weight = negatives.size / max(sampled.size, 1)
            positive_weight = negatives.size / max(positives.size, 1) if balance_classes else 1.0
            nodes = np.concatenate([positives, sampled])
            order = np.argsort(nodes, kind="stable")
            label = np.concatenate([np.ones(positives.size, np.float32), np.zeros(sampled.size, np.float32)])
            weight = np.concatenate([np.full(positives.size, positive_weight, np.float32),
                                     np.full(sampled.size, negative_weight, np.float32)])
            parts.append((nodes[order], np.full(nodes.size, task, np.int32), np.full(nodes.size, split_code, np.int8),
                          label[order], weight[order]))
    if not parts:
        return Pairs(np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int8),
                     np.empty(0, np.float32), np.empty(0, np.float32))
    return Pairs(*(np.concatenate(column) for column in zip(*parts)))
