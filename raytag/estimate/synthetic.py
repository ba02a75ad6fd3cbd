"""A synthetic gradient store with planted task groups, for tests and benchmarks.

Tasks come in groups; each group shares a direction ``u`` in the projected space along which
its labels move, so fine-tuning on tasks of the same group helps and on other groups helps
less. Gradients have a decaying spectrum, as projected per-sample gradients do.
"""

from __future__ import annotations

import numpy as np

from raytag.estimate.stats import TRAIN, VAL, GradientData


def synthetic_gradient_data(n_tasks: int = 100, n_train: int = 1000, n_val: int = 1000,
                            d: int = 200, n_groups: int = 10, signal: float = 1.0,
                            negative_weight: float = 3.0, seed: int = 0) -> GradientData:
    """Pairs sorted by (task, split) like the real store: ``n_train`` + ``n_val`` per task.

    Labels follow ``sigmoid(f + ĝ·u_group + ĝ·u_task)``; ``signal`` scales the directions, so
    a smaller signal means smaller fine-tuning updates. Negatives get ``negative_weight`` (as
    sampled negatives do in the real store).
    """
    rng = np.random.default_rng(seed)
    per_task = n_train + n_val
    n_pairs = n_tasks * per_task
    spectrum = (1.0 / np.sqrt(1.0 + np.arange(d) / 10.0)).astype(np.float32)
    grads = rng.standard_normal((n_pairs, d), dtype=np.float32)
    grads *= spectrum / np.sqrt(spectrum @ spectrum)
    group_dirs = rng.standard_normal((n_groups, d)) * spectrum
    task_group = rng.integers(n_groups, size=n_tasks)
    task_dirs = group_dirs[task_group] + 0.5 * rng.standard_normal((n_tasks, d)) * spectrum
    task_dirs *= signal / np.linalg.norm(task_dirs, axis=1, keepdims=True) * np.sqrt(d)
    task = np.repeat(np.arange(n_tasks, dtype=np.int32), per_task)
    split = np.tile(np.r_[np.full(n_train, TRAIN), np.full(n_val, VAL)].astype(np.int8), n_tasks)
    base_logits = (rng.normal(-2.0, 1.0, size=n_pairs)).astype(np.float32)
    shift = np.einsum("pd,pd->p", grads, task_dirs[task].astype(np.float32))
    label = (rng.random(n_pairs) < 1.0 / (1.0 + np.exp(-(base_logits + shift)))).astype(np.float32)
    weight = np.where(label > 0, 1.0, negative_weight).astype(np.float32)
    return GradientData(grads=grads, base_logits=base_logits, task=task, split=split,
                        label=label, weight=weight, n_tasks=n_tasks)
