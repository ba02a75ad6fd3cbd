"""Subset estimators: from per-pair projected gradients to every task's predicted validation
loss after fine-tuning on a subset of tasks, for thousands of subsets in batched tensor ops.

All estimators fit an update ``w`` [d] per subset in the projected space and evaluate the
linearized model ``f + ĝ·w`` on every task's validation pairs (tasks outside the subset too:
grouping needs them). They differ in how ``w`` is obtained:

- :class:`OneStepNewton` — one Newton step of the L2-penalized offset logistic loss from
  w = 0, from per-task sufficient statistics: a d×d solve per subset, whatever its sample count;
- :class:`NewtonLogistic` — the same objective to convergence (Newton/IRLS on the pairs);
- :class:`LinearizedFineTune` — the true fine-tune's optimizer (full-batch gradient descent,
  same learning rate and step count) on the linearized model: no regularization to choose;
- :class:`SeedLogistic` — the seed's fit: no offset, no intercept, sklearn-style ``C``.

Training objective of the first three (``masked_bce`` normalization): the mean over the
subset's tasks (those with training pairs) of each task's weighted-mean BCE of ``f + ĝ·w``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod

import numpy as np
import torch

from raytag.estimate.stats import (TRAIN, VAL, GradientData, TaskBlocks, task_blocks,
                                   task_losses, train_statistics)
from raytag.estimate.subsets import check_subsets, membership_matrix

_MATRIX_BUDGET = 1 << 25  # elements of the [B, d, d] batch of Hessians held at once


class SubsetEstimator(ABC):
    """Common interface: ``fit(GradientData)`` then ``predict(subsets [m, s]) -> [m, n]``.

    Constructor arguments are the estimator's parameters (``get_params``); everything set by
    ``fit`` ends in ``_``. ``updates`` exposes the fitted ``w`` per subset so a caller whose
    projector can map back may evaluate the real model at ``θ* + Pᵀw``.
    """

    dtype: str = "float32"
    matmul_dtype: str | None = None  # "bfloat16": fast low-precision per-pair products
    _products_in_training = False  # whether the fit multiplies training gradients per step

    def get_params(self) -> dict:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def unfitted_copy(self) -> "SubsetEstimator":
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def fit(self, data: GradientData) -> "SubsetEstimator":
        if not isinstance(data, GradientData):
            raise TypeError(f"fit expects a GradientData, got {type(data).__name__}")
        self.data_ = data
        self.n_tasks_ = int(data.n_tasks)
        self.d_ = data.d
        self.train_ = task_blocks(data, TRAIN, self.dtype,
                                  self.matmul_dtype if self._products_in_training else None)
        self.val_ = task_blocks(data, VAL, self.dtype, self.matmul_dtype)
        zero = torch.zeros((1, self.d_), dtype=self.val_.weight_total.dtype)
        self.base_val_loss_ = task_losses(self.val_, zero)[0].double().numpy()
        self._fit_statistics()
        return self

    def _fit_statistics(self) -> None:
        """Hook for estimators that precompute something from the training pairs."""

    def default_batch_size(self) -> int:
        return 512

    def updates(self, subsets, batch_size: int | None = None) -> np.ndarray:
        """Fitted update ``w`` for every subset: ``[m, d]``."""
        return np.concatenate([w.double().numpy() for w, _ in self._batches(subsets, batch_size)])

    def predict(self, subsets, batch_size: int | None = None, members_only: bool = False) -> np.ndarray:
        """Predicted validation loss of every task after fine-tuning on each subset: ``[m, n]``
        (NaN for tasks without validation pairs). ``members_only`` evaluates only the tasks in
        each subset (NaN elsewhere): all the affinity matrix needs, at a fraction of the cost."""
        return np.concatenate([
            task_losses(self.val_, w, member if members_only else None).double().numpy()
            for w, member in self._batches(subsets, batch_size)])

    def _batches(self, subsets, batch_size):
        if not hasattr(self, "train_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(data) first")
        subsets = check_subsets(subsets, self.n_tasks_)
        size = int(batch_size or self.default_batch_size())
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, subsets.shape[0], size):
            member = torch.from_numpy(membership_matrix(subsets[start:start + size], self.n_tasks_))
            yield self._updates(member & self.train_.present[None, :]), member

    @abstractmethod
    def _updates(self, member: torch.Tensor) -> torch.Tensor:
        """``member`` [B, n] bool (subset tasks that have training pairs) -> updates [B, d]."""


def _mean_weights(member: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, n]: 1/|S| on the subset's tasks (the mean over tasks), 0 elsewhere."""
    member = member.to(dtype)
    return member / member.sum(1, keepdim=True).clamp(min=1)


def _task_groups(member: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """For each task, the batch rows (subsets) that contain it."""
    return [(t, rows) for t in range(member.shape[1])
            if (rows := torch.nonzero(member[:, t]).flatten()).numel()]


def _check_dtype(dtype: str) -> str:
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dtype


def _check_matmul_dtype(matmul_dtype):
    if matmul_dtype not in (None, "bfloat16"):
        raise ValueError(f"matmul_dtype must be None or 'bfloat16', got {matmul_dtype!r}")
    return matmul_dtype


def _check_positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _spd_solve(matrices: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``matrices @ x = rhs`` for a batch of symmetric positive definite matrices."""
    factor, info = torch.linalg.cholesky_ex(matrices)
    if bool((info != 0).any()):  # only reachable through severe round-off: fall back to LU
        return torch.linalg.solve(matrices, rhs)
    return torch.cholesky_solve(rhs[..., None], factor)[..., 0]


class OneStepNewton(SubsetEstimator):
    """``w = (mean_t H_t + l2·I)⁻¹ mean_t b_t``: one Newton step from w = 0 of the subset's
    mean offset-logistic loss plus ``l2/2·||w||²`` (statistics from :mod:`.stats`)."""

    def __init__(self, l2: float = 1e-3, dtype: str = "float32", matmul_dtype: str | None = None):
        self.l2 = _check_positive("l2", l2)
        self.dtype = _check_dtype(dtype)
        self.matmul_dtype = _check_matmul_dtype(matmul_dtype)

    def _fit_statistics(self) -> None:
        self.stats_ = train_statistics(self.train_)

    def default_batch_size(self) -> int:
        return max(1, min(1024, _MATRIX_BUDGET // self.d_ ** 2))

    def _updates(self, member):
        stats = self.stats_
        weights = _mean_weights(member, stats.hessian.dtype)
        hessian = (weights @ stats.hessian.reshape(self.n_tasks_, -1)).reshape(-1, self.d_, self.d_)
        hessian.diagonal(dim1=1, dim2=2).add_(self.l2)
        return _spd_solve(hessian, weights @ stats.neg_gradient)


def _weighted_grams(grads: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``[k, d, d]``: ``gradsᵀ diag(coef[:, j]) grads`` for each column j, in memory-bounded chunks."""
    n_pairs, d = grads.shape
    out = torch.empty((coef.shape[1], d, d), dtype=grads.dtype)
    chunk = max(1, (1 << 24) // max(1, n_pairs * d))
    for start in range(0, coef.shape[1], chunk):
        c = coef[:, start:start + chunk].T  # [c, n_pairs]
        out[start:start + chunk] = torch.matmul((c[:, :, None] * grads).transpose(1, 2), grads)
    return out


def _newton(train: TaskBlocks, member: torch.Tensor, *, l2: float, max_iter: int, tol: float,
            with_offset: bool, task_mean: bool) -> torch.Tensor:
    """Batched Newton/IRLS for the L2-penalized logistic fit of each subset, from w = 0.

    Objective per subset: ``Σ_t a_t Σ_i ω_i BCE(o_i + ĝ_i·w, y_i) + l2/2·||w||²`` with
    ``a_t = 1/(|S|·Σω)`` (``task_mean``, the masked_bce normalization) or 1 (sum of weighted
    pair losses), ``o`` the base logits (``with_offset``) or 0.
    """
    dtype = train.weight_total.dtype
    n_sub, d = member.shape[0], train.d
    scale = _mean_weights(member, dtype) if task_mean else member.to(dtype)
    groups = _task_groups(member)
    updates = torch.zeros((n_sub, d), dtype=dtype)
    eye = torch.eye(d, dtype=dtype)
    for _ in range(max_iter):
        gradient = l2 * updates
        hessian = (l2 * eye).repeat(n_sub, 1, 1)
        for t, rows in groups:
            grads = train.grads[t]
            pair_weight = train.unit_weight(t) if task_mean else train.weight[t]
            logits = grads @ updates[rows].T  # [n_t, k]
            if with_offset:
                logits += train.offset[t][:, None]
            prob = torch.sigmoid(logits)
            coef = pair_weight[:, None] * scale[rows, t][None, :]
            gradient.index_add_(0, rows, ((prob - train.label[t][:, None]) * coef).T @ grads)
            hessian.index_add_(0, rows, _weighted_grams(grads, prob * (1 - prob) * coef))
        step = _spd_solve(hessian, gradient)
        updates -= step
        if bool((step.norm(dim=1) <= tol * updates.norm(dim=1).clamp(min=1.0)).all()):
            break
    return updates


class _IterativeNewton(SubsetEstimator):
    """Shared settings of the estimators that run Newton/IRLS iterations per subset."""

    def _set_iteration(self, max_iter: int, tol: float, dtype: str) -> None:
        self.max_iter = int(_check_positive("max_iter", max_iter))
        self.tol = float(tol)
        self.dtype = _check_dtype(dtype)

    def default_batch_size(self) -> int:
        return max(1, min(256, (_MATRIX_BUDGET // 2) // self.d_ ** 2))


class NewtonLogistic(_IterativeNewton):
    """The :class:`OneStepNewton` objective solved to convergence by Newton/IRLS on the
    subset's training pairs (``max_iter=1`` is exactly the one-step estimate)."""

    def __init__(self, l2: float = 1e-3, max_iter: int = 25, tol: float = 1e-6,
                 dtype: str = "float32"):
        self.l2 = _check_positive("l2", l2)
        self._set_iteration(max_iter, tol, dtype)

    def _updates(self, member):
        return _newton(self.train_, member, l2=self.l2, max_iter=self.max_iter, tol=self.tol,
                       with_offset=True, task_mean=True)


class SeedLogistic(_IterativeNewton):
    """The seed's regression: logistic on the gradients alone (no base-logit offset, no
    intercept), sklearn-style ``C``: minimize ``Σ_i ω_i log-loss + ||w||²/(2C)`` over the subset's
    training pairs (ω = pair weights, i.e. sklearn's ``sample_weight``). Evaluated like the
    others, as ``f + ĝ·w``; kept to compare against the seed."""

    def __init__(self, C: float = 1.0, max_iter: int = 25, tol: float = 1e-6,
                 dtype: str = "float32"):
        self.C = _check_positive("C", C)
        self._set_iteration(max_iter, tol, dtype)

    def _updates(self, member):
        return _newton(self.train_, member, l2=1.0 / self.C, max_iter=self.max_iter, tol=self.tol,
                       with_offset=False, task_mean=False)


class LinearizedFineTune(SubsetEstimator):
    """Full-batch gradient descent from w = 0 on the linearized model ``f + ĝ·w``, with the
    true fine-tune's learning rate ``lr`` and step count ``steps``.

    Each step costs two GEMMs per task over all subsets of the batch that contain it, so a
    batch of subsets advances as a handful of large matrix products.
    """

    _products_in_training = True

    def __init__(self, lr: float, steps: int, dtype: str = "float32", matmul_dtype: str | None = None):
        self.lr = _check_positive("lr", lr)
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        self.steps = int(steps)
        self.dtype = _check_dtype(dtype)
        self.matmul_dtype = _check_matmul_dtype(matmul_dtype)

    def default_batch_size(self) -> int:
        return 1024

    def _updates(self, member):
        train = self.train_
        dtype = train.weight_total.dtype
        scale = _mean_weights(member, dtype)
        groups = [(t, rows, train.unit_weight(t)[:, None] * scale[rows, t][None, :])
                  for t, rows in _task_groups(member)]
        updates = torch.zeros((member.shape[0], self.d_), dtype=dtype)
        for _ in range(self.steps):
            gradient = torch.zeros_like(updates)
            for t, rows, coef in groups:
                logits = train.grads_times(t, updates[rows].T)
                logits += train.offset[t][:, None]
                residual = (torch.sigmoid_(logits) - train.label[t][:, None]) * coef
                gradient.index_add_(0, rows, train.grads_transpose_times(t, residual))
            updates.add_(gradient, alpha=-self.lr)
        return updates


ESTIMATORS = {
    "onestep": OneStepNewton,
    "newton": NewtonLogistic,
    "linearized": LinearizedFineTune,
    "seed": SeedLogistic,
}
