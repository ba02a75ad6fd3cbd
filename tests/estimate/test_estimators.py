import numpy as np
import pytest
import torch
from scipy.optimize import approx_fprime, minimize

from raytag.estimate.estimators import (LinearizedFineTune, NewtonLogistic, OneStepNewton,
                                        SeedLogistic)
from raytag.estimate.stats import TRAIN, VAL
from raytag.models import masked_bce

from tiny_problem import make_tiny

SUBSETS = np.array([[0, 1, -1], [1, 2, 3], [0, 3, -1], [2, -1, -1]])


def _scipy_fit(fun, d):
    return minimize(fun, np.zeros(d), method="BFGS", options={"gtol": 1e-11}).x


def _predicted_val_losses(tiny, w):
    return [tiny.task_loss(w, t, VAL) for t in range(tiny.data.n_tasks)]


def test_newton_matches_scipy_minimizer(tiny):
    est = NewtonLogistic(l2=0.05, tol=1e-12, dtype="float64").fit(tiny.data)
    updates = est.updates(SUBSETS)
    predicted = est.predict(SUBSETS)
    for k, row in enumerate(SUBSETS):
        subset = row[row >= 0]
        w = _scipy_fit(lambda w: tiny.objective(w, subset, 0.05), 3)
        np.testing.assert_allclose(updates[k], w, atol=1e-6)
        np.testing.assert_allclose(predicted[k], _predicted_val_losses(tiny, w), atol=1e-7)


def test_one_step_is_a_newton_step_from_zero(tiny):
    """Against finite-difference gradient and Hessian of the numpy objective at w = 0."""
    est = OneStepNewton(l2=0.05, dtype="float64").fit(tiny.data)
    updates = est.updates(SUBSETS)
    eps = 1e-5
    for k, row in enumerate(SUBSETS):
        subset = row[row >= 0]
        grad = lambda w: approx_fprime(w, lambda v: tiny.objective(v, subset, 0.05), eps)  # noqa: E731
        hessian = np.stack([(grad(eps * e) - grad(-eps * e)) / (2 * eps) for e in np.eye(3)])
        expected = -np.linalg.solve((hessian + hessian.T) / 2, grad(np.zeros(3)))
        np.testing.assert_allclose(updates[k], expected, rtol=1e-3, atol=1e-5)
    one_iter = NewtonLogistic(l2=0.05, max_iter=1, dtype="float64").fit(tiny.data)
    np.testing.assert_allclose(one_iter.updates(SUBSETS), updates, rtol=1e-10, atol=1e-12)


def test_one_step_close_to_converged_for_small_updates(tiny):
    one = OneStepNewton(l2=2.0, dtype="float64").fit(tiny.data).predict(SUBSETS)
    full = NewtonLogistic(l2=2.0, dtype="float64").fit(tiny.data).predict(SUBSETS)
    base = OneStepNewton(l2=2.0, dtype="float64").fit(tiny.data).base_val_loss_
    change = np.abs(full - base).max()
    assert change > 1e-3  # the fit moves the losses ...
    assert np.abs(one - full).max() < 0.02 * change  # ... and one step gets almost all of it


def test_linearized_matches_autograd_gradient_descent(tiny):
    lr, steps = 0.7, 25
    est = LinearizedFineTune(lr=lr, steps=steps, dtype="float64").fit(tiny.data)
    updates = est.updates(SUBSETS)
    offset, grads = torch.from_numpy(tiny.offset), torch.from_numpy(tiny.grads)
    labels = torch.from_numpy(tiny.label)
    for k, row in enumerate(SUBSETS):
        in_subset = np.isin(np.arange(4), row)
        weights = torch.from_numpy(tiny.weight * (tiny.split == TRAIN) * in_subset[None, :])
        w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        for _ in range(steps):
            loss = masked_bce(offset + grads @ w, labels, weights)
            (g,) = torch.autograd.grad(loss, w)
            with torch.no_grad():
                w -= lr * g
        np.testing.assert_allclose(updates[k], w.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert np.abs(updates).min() > 1e-3


def test_seed_logistic_matches_scipy(tiny):
    C = 0.8
    est = SeedLogistic(C=C, tol=1e-12, dtype="float64").fit(tiny.data)
    updates = est.updates(SUBSETS)
    for k, row in enumerate(SUBSETS):
        mask = (tiny.split == TRAIN) & np.isin(np.arange(4), row)[None, :]
        g, y, wt = tiny.grads[mask], tiny.label[mask], tiny.weight[mask]

        def objective(w):
            z = g @ w
            return np.sum(wt * (np.logaddexp(0, z) - y * z)) + w @ w / (2 * C)

        np.testing.assert_allclose(updates[k], _scipy_fit(objective, 3), atol=1e-6)


def test_task_without_training_pairs_is_left_out_of_the_mean():
    tiny = make_tiny(drop_train_of=1)
    est = NewtonLogistic(l2=0.1, tol=1e-12, dtype="float64").fit(tiny.data)
    with_empty = est.updates(np.array([[0, 1, 2]]))[0]
    np.testing.assert_allclose(with_empty, est.updates(np.array([[0, 2]]))[0], atol=1e-12)
    np.testing.assert_allclose(with_empty, _scipy_fit(lambda w: tiny.objective(w, [0, 2], 0.1), 3),
                               atol=1e-6)
    only_empty = est.predict(np.array([[1]]))[0]
    np.testing.assert_allclose(only_empty, est.base_val_loss_)


@pytest.mark.parametrize("make", [
    lambda: OneStepNewton(l2=0.05),
    lambda: NewtonLogistic(l2=0.05),
    lambda: LinearizedFineTune(lr=0.5, steps=10),
    lambda: SeedLogistic(C=1.0),
])
def test_float32_batches_agree_with_float64(tiny, make):
    est32 = make().fit(tiny.data)
    est64 = type(est32)(**{**est32.get_params(), "dtype": "float64"}).fit(tiny.data)
    whole = est32.predict(SUBSETS)
    np.testing.assert_allclose(est32.predict(SUBSETS, batch_size=1), whole, rtol=1e-5)
    np.testing.assert_allclose(whole, est64.predict(SUBSETS), rtol=1e-4)
    assert whole.shape == (4, 4) and np.isfinite(whole).all()
    # tasks outside the subset are predicted too, and they move
    assert np.abs(whole[0, 2:] - est32.base_val_loss_[2:]).min() > 1e-6
    assert repr(est32.unfitted_copy()) == repr(est32)


def test_errors(tiny):
    with pytest.raises(RuntimeError, match="not fitted"):
        OneStepNewton().predict(SUBSETS)
    with pytest.raises(ValueError, match="l2"):
        OneStepNewton(l2=0)
    with pytest.raises(ValueError, match="steps"):
        LinearizedFineTune(lr=0.1, steps=-1)
    with pytest.raises(ValueError, match="outside"):
        OneStepNewton().fit(tiny.data).predict(np.array([[0, 9]]))


def test_members_only_matches_full_prediction_on_members(tiny):
    est = LinearizedFineTune(lr=0.5, steps=10, dtype="float64").fit(tiny.data)
    full, members = est.predict(SUBSETS), est.predict(SUBSETS, members_only=True)
    inside = (SUBSETS[:, :, None] == np.arange(4)).any(1)
    np.testing.assert_allclose(members[inside], full[inside], rtol=1e-12)
    assert np.isnan(members[~inside]).all()


@pytest.mark.parametrize("make", [lambda **kw: OneStepNewton(l2=0.05, **kw),
                                  lambda **kw: LinearizedFineTune(lr=0.5, steps=10, **kw)])
def test_bfloat16_products_stay_close(make):
    tiny = make_tiny(n_nodes=200, d=16, seed=3)
    exact, fast = make().fit(tiny.data), make(matmul_dtype="bfloat16").fit(tiny.data)
    change = exact.predict(SUBSETS) - exact.base_val_loss_
    fast_change = fast.predict(SUBSETS) - exact.base_val_loss_
    assert np.abs(fast_change - change).max() < 0.03 * np.abs(change).max()
    assert not np.array_equal(fast_change, change)  # the low-precision path really ran
    with pytest.raises(ValueError, match="matmul_dtype"):
        make(matmul_dtype="float16")
