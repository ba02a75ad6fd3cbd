"""A tiny pairs problem with its dense (node x task) layout, so references can be computed
independently of the estimators' per-task blocks (numpy loops, scipy, masked_bce)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raytag.estimate.stats import GradientData


@dataclass
class Tiny:
    data: GradientData
    exists: np.ndarray  # [N, n] bool
    split: np.ndarray  # [N, n] 0 (no pair) / 1 / 2
    label: np.ndarray  # [N, n]
    weight: np.ndarray  # [N, n]
    offset: np.ndarray  # [N, n]
    grads: np.ndarray  # [N, n, d]

    def task_loss(self, w, t, split):
        """Weighted-mean BCE of task t over its pairs of ``split`` (plain numpy)."""
        mask = self.split[:, t] == split
        z = self.offset[mask, t] + self.grads[mask, t] @ w
        y, wt = self.label[mask, t], self.weight[mask, t]
        return float(np.sum(wt * (np.logaddexp(0, z) - y * z)) / np.sum(wt))

    def objective(self, w, subset, l2):
        tasks = [t for t in subset if (self.split[:, t] == 1).any()]
        return np.mean([self.task_loss(w, t, 1) for t in tasks]) + 0.5 * l2 * w @ w


def make_tiny(n_nodes=40, n_tasks=4, d=3, seed=0, shuffle=False, drop_train_of=None) -> Tiny:
    rng = np.random.default_rng(seed)
    exists = rng.random((n_nodes, n_tasks)) < 0.8
    split = np.where(exists, rng.choice([1, 2], size=(n_nodes, n_tasks), p=[0.6, 0.4]), 0)
    if drop_train_of is not None:
        split[split[:, drop_train_of] == 1, drop_train_of] = 0
        exists = split > 0
    label = (rng.random((n_nodes, n_tasks)) < 0.35).astype(np.float64)
    weight = np.where(label > 0, 1.0, 2.5)
    offset = rng.normal(-0.7, 1.0, size=(n_nodes, n_tasks))
    grads = rng.normal(size=(n_nodes, n_tasks, d))
    node, task = np.nonzero(exists)
    order = np.lexsort((node, split[node, task], task))  # the store's (task, split, node) order
    if shuffle:
        order = rng.permutation(order)
    node, task = node[order], task[order]
    data = GradientData(grads=grads[node, task], base_logits=offset[node, task],
                        task=task.astype(np.int32), split=split[node, task].astype(np.int8),
                        label=label[node, task].astype(np.float32),
                        weight=weight[node, task].astype(np.float32), n_tasks=n_tasks)
    return Tiny(data, exists, split, label, weight, offset, grads)
