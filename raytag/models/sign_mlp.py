"""SIGN-MLP: an MLP over precomputed SIGN features with one output logit per task.

The model is a plain stack of ``nn.Linear`` layers with ReLU between them, so the
factored gradient projector (``raytag.grads.fast``) can read its structure from
``model.linears``: every layer's per-sample gradient is an outer product.
"""

from __future__ import annotations

import torch
from torch import nn


class SignMLP(nn.Module):
    """``x -> [Linear -> ReLU -> Dropout]* -> Linear(num_tasks)``.

    ``linears`` holds every linear layer in order; the last one is the task head
    (row ``t`` of its weight belongs to task ``t``).
    """

    activation = "relu"

    def __init__(self, in_dim: int, hidden_dims: list[int], num_tasks: int, dropout: float = 0.0):
        super().__init__()
        dims = [in_dim, *hidden_dims, num_tasks]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = dropout
        self.in_dim = in_dim
        self.hidden_dims = list(hidden_dims)
        self.num_tasks = num_tasks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.linears[:-1]:
            x = torch.relu(layer(x))
            if self.dropout > 0:
                x = nn.functional.dropout(x, self.dropout, self.training)
        return self.linears[-1](x)

    def reset_parameters(self) -> None:
        """Fresh weights from the global torch RNG (a group model trained from scratch)."""
        for layer in self.linears:
            layer.reset_parameters()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's output (input of the task head), used for representation similarity."""
        for layer in self.linears[:-1]:
            x = torch.relu(layer(x))
        return x

    def spec(self) -> dict:
        return {"in_dim": self.in_dim, "hidden_dims": self.hidden_dims,
                "num_tasks": self.num_tasks, "dropout": self.dropout}

    @classmethod
    def from_spec(cls, spec: dict) -> "SignMLP":
        return cls(spec["in_dim"], spec["hidden_dims"], spec["num_tasks"], spec.get("dropout", 0.0))


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multitask loss: mean over tasks of each task's weighted-mean binary cross-entropy.

    ``weights[i, t]`` is 0 where sample ``i`` is not in task ``t``'s training set; tasks with
    no weight in the batch are left out of the mean. Every training, fine-tuning and
    estimation path uses this normalization so their losses are comparable.
    """
    per_elem = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    task_weight = weights.sum(dim=0)
    present = task_weight > 0
    per_task = (per_elem * weights).sum(dim=0)[present] / task_weight[present]
    if per_task.numel() == 0:
        return logits.sum() * 0.0
    return per_task.mean()
