"""Exact per-sample gradients of task logits for any ``nn.Module`` (``torch.func``).

The reference path: ``vmap`` over ``grad`` of one (sample, task) logit gives the full D-dim
per-sample gradient, chunked so only ``chunk × D`` floats exist at once, then a projector
(dense or informed) maps it to d dims. Works for any model; the factored fast path
(``raytag.grads.fast``) must agree with it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from raytag.grads.projectors import Projector


class ProjectedGradients(NamedTuple):
    """Projected per-pair gradients and the base logits ``f_t(x; θ*)`` of the same pairs."""

    grads: torch.Tensor   # [B, d] (pairs) or [B, n, d] (all tasks)
    logits: torch.Tensor  # [B] or [B, n]


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Gradients are taken at θ* without dropout; restore the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_pairs(x: torch.Tensor, task_idx: torch.Tensor, num_tasks: int | None = None) -> torch.Tensor:
    """Validate one task index per row of ``x``; returns ``task_idx`` as int64 on x's device."""
    task_idx = torch.as_tensor(task_idx, device=x.device).long().reshape(-1)
    if x.ndim != 2 or task_idx.shape[0] != x.shape[0]:
        raise ValueError(f"need x [B, F] and task_idx [B]; got x {tuple(x.shape)} and "
                         f"task_idx {tuple(task_idx.shape)}")
    if num_tasks is not None and len(task_idx) and (task_idx.min() < 0 or task_idx.max() >= num_tasks):
        raise ValueError(f"task_idx values must lie in [0, {num_tasks}); got "
                         f"[{int(task_idx.min())}, {int(task_idx.max())}]")
    return task_idx


def per_sample_logit_gradients(model: nn.Module, x: torch.Tensor, task_idx: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``∇_θ f_{t_b}(x_b)`` for each row b: ``([B, D] flattened in named_parameters order, [B])``.

    Holds ``B × D`` floats; use ``iter_per_sample_gradients`` to bound memory.
    """
    names, params = zip(*[(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad])

    def logit(param_values, xi, ti):
        out = functional_call(model, dict(zip(names, param_values)), (xi.unsqueeze(0),))
        return out.reshape(-1).gather(0, ti.reshape(1)).squeeze(0)

    with eval_mode(model):
        grads, values = vmap(grad_and_value(logit), in_dims=(None, 0, 0))(params, x, task_idx)
    flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)
    return flat, values


def iter_per_sample_gradients(model: nn.Module, x: torch.Tensor, task_idx: torch.Tensor,
                              chunk: int = 128) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(grads [c, D], logits [c])`` for consecutive chunks of rows."""
    device = next(model.parameters()).device
    x = x.to(device)
    task_idx = check_pairs(x, task_idx)
    for start in range(0, x.shape[0], chunk):
        yield per_sample_logit_gradients(model, x[start:start + chunk], task_idx[start:start + chunk])


def exact_projected_gradients(model: nn.Module, x: torch.Tensor, task_idx: torch.Tensor,
                              projector: Projector, chunk: int = 128) -> ProjectedGradients:
    """Projected exact per-sample gradients of each row's task logit, ``chunk`` rows at a time."""
    if projector.D != parameter_count(model):
        raise ValueError(f"projector expects D={projector.D} parameters but the model has "
                         f"{parameter_count(model)}")
    grads, logits = [], []
    for g, value in iter_per_sample_gradients(model, x, task_idx, chunk):
        grads.append(projector.project(g))
        logits.append(value)
    if not grads:
        device = next(model.parameters()).device
        return ProjectedGradients(torch.zeros(0, projector.d, device=device), torch.zeros(0, device=device))
    return ProjectedGradients(torch.cat(grads), torch.cat(logits).float())


class ExactGradientProjector:
    """Callable ``(x [B, F], task_idx [B]) -> ProjectedGradients`` over the exact path."""

    def __init__(self, model: nn.Module, projector: Projector, chunk: int = 128):
        self.model, self.projector, self.chunk = model, projector, chunk

    def __call__(self, x: torch.Tensor, task_idx: torch.Tensor) -> ProjectedGradients:
        return exact_projected_gradients(self.model, x, task_idx, self.projector, self.chunk)
