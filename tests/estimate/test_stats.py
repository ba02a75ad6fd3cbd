import numpy as np
import pytest
import torch

from raytag.estimate.stats import (TRAIN, VAL, GradientData, task_blocks, task_losses,
                                   train_statistics)
from raytag.models import masked_bce

from tiny_problem import make_tiny


def _reference_statistics(tiny, t):
    """Loop over task t's training pairs (numpy, float64)."""
    d = tiny.grads.shape[2]
    hessian, neg_gradient, total = np.zeros((d, d)), np.zeros(d), 0.0
    for i in np.flatnonzero(tiny.split[:, t] == TRAIN):
        g, w = tiny.grads[i, t], tiny.weight[i, t]
        p = 1 / (1 + np.exp(-tiny.offset[i, t]))
        hessian += w * p * (1 - p) * np.outer(g, g)
        neg_gradient += w * (tiny.label[i, t] - p) * g
        total += w
    return hessian / total, neg_gradient / total


@pytest.mark.parametrize("shuffle", [False, True])
def test_train_statistics_match_loop(shuffle):
    tiny = make_tiny(shuffle=shuffle, seed=4)
    stats = train_statistics(task_blocks(tiny.data, TRAIN, "float64"))
    for t in range(tiny.data.n_tasks):
        hessian, neg_gradient = _reference_statistics(tiny, t)
        np.testing.assert_allclose(stats.hessian[t].numpy(), hessian, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats.neg_gradient[t].numpy(), neg_gradient, rtol=1e-12, atol=1e-12)
    assert stats.present.all()


def test_blocks_are_views_of_sorted_store():
    tiny = make_tiny()
    blocks = task_blocks(tiny.data, VAL, "float64")
    assert np.shares_memory(blocks.grads[2].numpy(), tiny.data.grads)
    assert sum(b.shape[0] for b in blocks.grads) == int((tiny.data.split == VAL).sum())


def test_task_without_pairs_is_absent_and_nan():
    tiny = make_tiny(drop_train_of=1)
    blocks = task_blocks(tiny.data, TRAIN, "float64")
    assert blocks.present.tolist() == [True, False, True, True]
    stats = train_statistics(blocks)
    assert torch.count_nonzero(stats.hessian[1]) == 0
    losses = task_losses(blocks, torch.zeros((2, 3), dtype=torch.float64))
    assert torch.isnan(losses[:, 1]).all() and torch.isfinite(losses[:, [0, 2, 3]]).all()


def test_task_losses_match_masked_bce(tiny):
    rng = np.random.default_rng(0)
    updates = rng.normal(scale=0.3, size=(5, 3))
    losses = task_losses(task_blocks(tiny.data, VAL, "float64"), torch.from_numpy(updates))
    for k, w in enumerate(updates):
        logits = torch.from_numpy(tiny.offset + tiny.grads @ w)
        for t in range(tiny.data.n_tasks):
            only_t = np.zeros_like(tiny.weight)
            only_t[:, t] = tiny.weight[:, t] * (tiny.split[:, t] == VAL)
            expected = masked_bce(logits, torch.from_numpy(tiny.label), torch.from_numpy(only_t))
            assert losses[k, t].item() == pytest.approx(expected.item(), rel=1e-12)


def test_gradient_data_validation(tiny):
    d = tiny.data
    with pytest.raises(ValueError, match="base_logits"):
        GradientData(d.grads, d.base_logits[:-1], d.task, d.split, d.label, d.weight, d.n_tasks)
    with pytest.raises(ValueError, match="task indices"):
        GradientData(d.grads, d.base_logits, d.task, d.split, d.label, d.weight, 2)
    with pytest.raises(ValueError, match="weight"):
        GradientData(d.grads, d.base_logits, d.task, d.split, d.label, -d.weight, d.n_tasks)
    with pytest.raises(ValueError, match="dtype"):
        task_blocks(d, TRAIN, "float16")
