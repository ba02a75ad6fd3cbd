"""Build the configured projector from a sample of training pairs (no ray)."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from raytag.grads.fast import layer_gradient_energy, layer_input_means
from raytag.grads.informed import exact_gradient_chunks, fit_kfac_projector, fit_svd_projector
from raytag.grads.projectors import DenseProjector, KroneckerProjector, Projector, linear_layer_shapes
from raytag.grads.taskgrad import TaskBatch, fit_task_gradient_projector, task_gradients

PROJECTOR_KINDS = ("taskgrad", "kfac", "kronecker", "svd", "gaussian", "rademacher")


def build_projector(kind: str, model: torch.nn.Module, x_fit: torch.Tensor, task_fit: torch.Tensor,
                    weight_fit: torch.Tensor, d: int, seed: int,
                    training_batches: Callable[[], Iterable[TaskBatch]] | None = None,
                    task_rank: int = 4) -> Projector:
    """``taskgrad`` is fitted on all training pairs (``training_batches()`` yields
    ``(x, task_idx, label, weight)`` chunks); ``kfac``/``svd`` on the sample; ``kronecker`` uses
    it to allocate dims per layer and to sketch each layer's mean input direction exactly;
    dense kinds ignore it."""
    if kind not in PROJECTOR_KINDS:
        raise ValueError(f"project.projector={kind!r}; allowed: {', '.join(PROJECTOR_KINDS)}")
    parameters = sum(p.numel() for p in model.parameters())
    if d > parameters:
        raise ValueError(f"project.d={d} exceeds the model's {parameters} parameters; choose a smaller d")
    if kind == "taskgrad":
        if training_batches is None:
            raise ValueError("projector 'taskgrad' needs the training pairs (training_batches)")
        counted = [0]

        def counting():
            for batch in training_batches():
                counted[0] += int(batch[0].shape[0])
                yield batch

        shapes = linear_layer_shapes(model.linears)
        projector = fit_task_gradient_projector(task_gradients(model, counting()), shapes, d, rank=task_rank)
        projector.info.update(n_fit_pairs=counted[0], n_tasks=model.linears[-1].out_features)
        return projector
    if kind == "kfac":
        return fit_kfac_projector(model, x_fit, task_fit, d, weight=weight_fit)
    if kind == "svd":
        return fit_svd_projector(exact_gradient_chunks(model, x_fit, task_fit), d, seed=seed)
    if kind == "kronecker":
        shapes = linear_layer_shapes(model.linears)
        return KroneckerProjector.random(
            shapes, d, seed=seed, layer_weights=layer_gradient_energy(model, x_fit, task_fit),
            input_means=layer_input_means(model, x_fit))
    return DenseProjector(parameters, d, kind=kind, seed=seed)


def fit_sample(task: np.ndarray, split: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a seeded uniform sample of training pairs used to fit a projector."""
    train = np.flatnonzero(split == 1)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train, size=min(size, train.size), replace=False))
