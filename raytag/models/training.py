"""Training loops in plain torch (no ray): minibatch epochs, full-batch fine-tunes, prediction.

Ray Train (``raytag.distributed.train``) and Ray Tune (``raytag.distributed.tune``) call these;
keeping them here makes every loop testable without a Ray session.
"""

from __future__ import annotations

import numpy as np
import torch

from raytag.models.sign_mlp import SignMLP, masked_bce


def train_epoch(model: SignMLP, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
                weights: torch.Tensor, batch_size: int, generator: torch.Generator) -> float:
    """One pass over the rows in random order; returns the mean minibatch loss."""
    model.train()
    order = torch.randperm(x.shape[0], generator=generator)
    total, batches = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        rows = order[start:start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = masked_bce(model(x[rows]), labels[rows], weights[rows])
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        batches += 1
    return total / max(1, batches)


@torch.no_grad()
def predict(model: SignMLP, x: torch.Tensor, batch_size: int = 65536) -> np.ndarray:
    """Logits for every row, float32 numpy [N, num_tasks]."""
    model.eval()
    parts = [model(x[start:start + batch_size]).float().cpu() for start in range(0, x.shape[0], batch_size)]
    return torch.cat(parts).numpy()


def finetune_gradient_descent(model: SignMLP, x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                              lr: float, steps: int) -> SignMLP:
    """Deterministic full-batch plain gradient descent on ``masked_bce`` (the estimators' truth).

    Every step sees the same rows in the same order, so two runs agree to round-off.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(steps):
        loss = masked_bce(model(x), labels, weights)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for param, grad in zip(params, grads):
                param.sub_(lr * grad)
    return model


def finetune_adam(model: SignMLP, x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                  lr: float, epochs: int, batch_size: int, seed: int) -> SignMLP:
    """Seeded minibatch Adam fine-tune (the stochastic alternative, for the noise ceiling)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        train_epoch(model, optimizer, x, labels, weights, batch_size, generator)
    return model
