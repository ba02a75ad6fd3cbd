"""Real fine-tuning on (sample, task) pairs: the truth the estimators are checked against.

Fine-tunes see a subset's training pairs (all positives plus weighted negative samples,
the same rows the gradient store holds), so true and estimated losses are measured on
identical data; the loss is ``masked_bce``: mean over the subset's tasks of each task's
weighted-mean BCE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raytag.data.pairs import Pairs
from raytag.data.tasks import TRAIN, VAL
from raytag.models.sign_mlp import SignMLP
from raytag.models.training import finetune_adam, finetune_gradient_descent


@dataclass(frozen=True)
class PairMatrix:
    """Pairs of one split laid out for ``masked_bce``: unique node rows and [U, n] label/weight matrices."""

    rows: np.ndarray
    labels: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def build(cls, pairs: Pairs, split: int, tasks: np.ndarray | None, num_tasks: int) -> "PairMatrix":
        keep = pairs.split == split
        if tasks is not None:
            keep &= np.isin(pairs.task, tasks)
        node, task = pairs.node[keep], pairs.task[keep]
        rows, position = np.unique(node, return_inverse=True)
        labels = np.zeros((rows.size, num_tasks), dtype=np.float32)
        weights = np.zeros((rows.size, num_tasks), dtype=np.float32)
        labels[position, task] = pairs.label[keep]
        weights[position, task] = pairs.weight[keep]
        return cls(rows, torch.from_numpy(labels), torch.from_numpy(weights))


@torch.no_grad()
def per_task_losses(model: SignMLP, features: np.ndarray, matrix: PairMatrix) -> np.ndarray:
    """Each task's weighted-mean BCE over the matrix's pairs (NaN for tasks without pairs)."""
    model.eval()
    logits = model(torch.from_numpy(np.asarray(features[matrix.rows], dtype=np.float32)))
    elementwise = torch.nn.functional.binary_cross_entropy_with_logits(logits, matrix.labels, reduction="none")
    total = matrix.weights.sum(dim=0)
    losses = (elementwise * matrix.weights).sum(dim=0) / total
    losses[total == 0] = float("nan")
    return losses.double().numpy()


def finetune_subset(model: SignMLP, features: np.ndarray, pairs: Pairs, subset: np.ndarray, *,
                    lr: float, steps: int, optimizer: str = "gd", seed: int = 0,
                    adam_epochs: int = 10, batch_size: int = 256) -> SignMLP:
    """Fine-tune ``model`` in place on the training pairs of the tasks in ``subset``.

    ``optimizer="gd"``: deterministic full-batch gradient descent (``steps`` steps);
    ``"adam"``: seeded minibatch Adam (``adam_epochs`` epochs), the stochastic comparison.
    """
    train = PairMatrix.build(pairs, TRAIN, np.asarray(subset), model.num_tasks)
    x = torch.from_numpy(np.asarray(features[train.rows], dtype=np.float32))
    if optimizer == "gd":
        return finetune_gradient_descent(model, x, train.labels, train.weights, lr, steps)
    return finetune_adam(model, x, train.labels, train.weights, lr, adam_epochs, batch_size, seed)


def validation_matrix(pairs: Pairs, num_tasks: int) -> PairMatrix:
    return PairMatrix.build(pairs, VAL, None, num_tasks)


def finetune_flops(model: SignMLP, pairs: Pairs, subset: np.ndarray, steps: int) -> float:
    """Analytic FLOPs of the full-batch fine-tune: forward + backward ≈ 6 · params · rows per step."""
    rows = np.unique(pairs.node[(pairs.split == TRAIN) & np.isin(pairs.task, subset)]).size
    params = sum(p.numel() for p in model.parameters())
    return 6.0 * params * rows * steps
