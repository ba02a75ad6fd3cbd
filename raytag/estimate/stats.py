"""Gradient data, per-task pair blocks, losses and sufficient statistics at w = 0.

Normalization (the same as ``raytag.models.masked_bce``): a task's loss is the weighted mean
BCE over its pairs of one split, and a subset's training loss is the plain mean of its tasks'
losses (tasks without training pairs are left out). So a subset's gradient and Hessian at
w = 0 are the means of per-task ``-b_t`` and ``H_t`` below, whatever the tasks' sample counts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

TRAIN, VAL = 1, 2
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
MATMUL_DTYPES = {None: None, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class GradientData:
    """What estimation reads from the gradient store: one row per (sample, task) pair.

    ``grads`` [P, d] projected per-sample gradients of the task's logit at θ*;
    ``base_logits`` [P] the logit at θ*; ``task`` [P] task index; ``split`` [P] 1 train,
    2 validation (other values are ignored); ``label`` [P] 0/1; ``weight`` [P] >= 0.
    """

    grads: np.ndarray
    base_logits: np.ndarray
    task: np.ndarray
    split: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    n_tasks: int

    def __post_init__(self):
        if self.grads.ndim != 2:
            raise ValueError(f"grads must be 2-D [P, d], got shape {self.grads.shape}")
        n_pairs = self.grads.shape[0]
        for field in ("base_logits", "task", "split", "label", "weight"):
            shape = np.shape(getattr(self, field))
            if shape != (n_pairs,):
                raise ValueError(f"{field} must have shape ({n_pairs},) like grads' rows, got {shape}")
        if int(self.n_tasks) < 1:
            raise ValueError(f"n_tasks must be >= 1, got {self.n_tasks}")
        if n_pairs and (self.task.min() < 0 or self.task.max() >= self.n_tasks):
            raise ValueError(f"task indices must lie in [0, n_tasks={self.n_tasks}), got "
                             f"[{self.task.min()}, {self.task.max()}]")
        if n_pairs and self.weight.min() < 0:
            raise ValueError(f"weight must be >= 0, got minimum {self.weight.min()}")

    @property
    def d(self) -> int:
        return int(self.grads.shape[1])

    def fingerprint(self) -> dict:
        """Cheap identity of the data (shapes plus a sample of values), for resume checks."""
        rows = np.linspace(0, max(self.grads.shape[0] - 1, 0), num=min(64, self.grads.shape[0]))
        sample = np.asarray(self.grads[rows.astype(np.int64)], dtype=np.float64)
        return {"n_pairs": int(self.grads.shape[0]), "d": self.d, "n_tasks": int(self.n_tasks),
                "grads_sample_sum": float(np.round(sample.sum(), 6)),
                "base_logits_sum": float(np.round(np.asarray(self.base_logits, np.float64).sum(), 6)),
                "weight_sum": float(np.round(np.asarray(self.weight, np.float64).sum(), 6))}


@dataclass(frozen=True)
class TaskBlocks:
    """One split's pairs grouped by task: lists of per-task tensors (views of the data when
    it is already sorted by task and float32, so shared read-only memory is not copied)."""

    grads: list[torch.Tensor]  # per task [n_t, d]
    offset: list[torch.Tensor]  # per task [n_t] base logits
    label: list[torch.Tensor]
    weight: list[torch.Tensor]  # raw pair weights
    weight_total: torch.Tensor  # [n] each task's weight sum (0 = task has no pairs)
    d: int
    matmul_grads: list[torch.Tensor]  # ``grads`` in the dtype used for the per-pair products

    def grads_times(self, t: int, columns: torch.Tensor) -> torch.Tensor:
        """``grads[t] @ columns`` ([n_t, k]), multiplied in the matmul dtype."""
        g = self.matmul_grads[t]
        return (g @ columns.to(g.dtype)).to(columns.dtype)

    def grads_transpose_times(self, t: int, residual: torch.Tensor) -> torch.Tensor:
        """``residual.T @ grads[t]`` ([k, d]), multiplied in the matmul dtype."""
        g = self.matmul_grads[t]
        return (residual.T.to(g.dtype) @ g).to(residual.dtype)

    @property
    def n_tasks(self) -> int:
        return len(self.grads)

    @property
    def present(self) -> torch.Tensor:
        return self.weight_total > 0

    def unit_weight(self, t: int) -> torch.Tensor:
        """Pair weights divided by the task's total, so a weighted sum is a weighted mean."""
        return self.weight[t] / self.weight_total[t]


def _as_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only (object-store) arrays: we never write to them
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(array).to(dtype)


def task_blocks(data: GradientData, split: int, dtype: str = "float32",
                matmul_dtype: str | None = None) -> TaskBlocks:
    """Group the pairs of ``split`` by task (no Python loop over pairs).

    ``matmul_dtype="bfloat16"`` keeps a bfloat16 copy of the gradients for the large
    per-pair products (several times faster on CPUs with AMX and on GPUs; results rounded to
    about 3 significant digits before they are accumulated in ``dtype``).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if matmul_dtype not in MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype must be one of {list(MATMUL_DTYPES)}, got {matmul_dtype!r}")
    torch_dtype = _DTYPES[dtype]
    rows = np.flatnonzero(np.asarray(data.split) == split)
    task = np.asarray(data.task, dtype=np.int64)[rows]
    if task.size and (np.diff(task) < 0).any():
        order = np.argsort(task, kind="stable")
        rows, task = rows[order], task[order]
    bounds = np.searchsorted(task, np.arange(data.n_tasks + 1))
    grads, offset, label, weight = [], [], [], []
    for t in range(data.n_tasks):  # per task (not per pair): slices, or one gather per task
        r = rows[bounds[t]:bounds[t + 1]]
        if r.size and r[-1] - r[0] + 1 == r.size:
            sel = slice(int(r[0]), int(r[-1]) + 1)  # the Pairs layout: a view, no copy
        else:
            sel = r
        grads.append(_as_tensor(data.grads[sel], torch_dtype))
        offset.append(_as_tensor(data.base_logits[sel], torch_dtype))
        label.append(_as_tensor(data.label[sel], torch_dtype))
        weight.append(_as_tensor(data.weight[sel], torch_dtype))
    total = torch.stack([w.sum() for w in weight]) if weight else torch.zeros(0, dtype=torch_dtype)
    low = MATMUL_DTYPES[matmul_dtype]
    matmul_grads = grads if low is None else [g.to(low) for g in grads]
    return TaskBlocks(grads, offset, label, weight, total, data.d, matmul_grads)


def task_losses(blocks: TaskBlocks, updates: torch.Tensor,
                members: torch.Tensor | None = None) -> torch.Tensor:
    """Each task's weighted-mean BCE of ``offset + grads @ w`` for every update ``w``.

    ``updates`` [B, d] -> [B, n]; NaN for tasks without pairs in this split, and, when
    ``members`` [B, n] bool is given, for entries it marks False (a task outside the subset:
    about n/s times less work when only in-subset losses are needed, as for the affinity).
    One GEMM per task covers all updates, and the [n_t, B] logits stay in cache-sized blocks.
    """
    out = torch.full((updates.shape[0], blocks.n_tasks), float("nan"), dtype=updates.dtype)
    columns = updates.T.contiguous()
    for t in range(blocks.n_tasks):
        if blocks.weight_total[t] <= 0:
            continue
        if members is None:
            logits = blocks.grads_times(t, columns)
        else:
            rows = torch.nonzero(members[:, t]).flatten()
            if rows.numel() == 0:
                continue
            logits = blocks.grads_times(t, updates[rows].T)
        logits += blocks.offset[t][:, None]
        # weighted BCE = Σ u·softplus(z) − Σ u·y·z: one elementwise pass instead of three
        unit = blocks.unit_weight(t)
        losses = unit @ torch.nn.functional.softplus(logits) - (unit * blocks.label[t]) @ logits
        if members is None:
            out[:, t] = losses
        else:
            out[rows, t] = losses
    return out


@dataclass(frozen=True)
class TaskStatistics:
    """Per-task sufficient statistics of the offset logistic loss at w = 0.

    ``hessian[t] = Σ w p(1-p) ĝĝᵀ / Σw`` and ``neg_gradient[t] = Σ w (y-p) ĝ / Σw`` over task
    t's training pairs (p = sigmoid of the base logit); zero for tasks without pairs.
    """

    hessian: torch.Tensor  # [n, d, d]
    neg_gradient: torch.Tensor  # [n, d]
    present: torch.Tensor  # [n] bool


def train_statistics(blocks: TaskBlocks) -> TaskStatistics:
    n, d = blocks.n_tasks, blocks.d
    dtype = blocks.weight_total.dtype
    hessian = torch.zeros((n, d, d), dtype=dtype)
    neg_gradient = torch.zeros((n, d), dtype=dtype)
    for t in range(n):  # per task: two GEMMs over all of its pairs
        if blocks.weight_total[t] <= 0:
            continue
        p = torch.sigmoid(blocks.offset[t])
        uw = blocks.unit_weight(t)
        g = blocks.grads[t]
        neg_gradient[t] = (uw * (blocks.label[t] - p)) @ g
        hessian[t] = g.T @ ((uw * p * (1 - p))[:, None] * g)
    return TaskStatistics(hessian, neg_gradient, blocks.present.clone())
