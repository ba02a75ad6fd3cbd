import numpy as np
import pytest
import torch

from raytag.grads import (FactoredGradientProjector, KroneckerProjector, linear_layer_shapes,
                          make_pair_projector, per_sample_logit_gradients)
from raytag.grads.fast import layer_gradient_energy


def test_identity_kronecker_inner_products_equal_exact(tiny_model, tiny_batch):
    x, t = tiny_batch
    exact, logits = per_sample_logit_gradients(tiny_model, x, t)
    fast = FactoredGradientProjector(tiny_model, KroneckerProjector.identity(linear_layer_shapes(tiny_model.linears)))
    out = fast.project_pairs(x, t)
    assert out.grads.shape == (12, 107)
    torch.testing.assert_close(out.grads @ out.grads.T, exact @ exact.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, logits)


def test_all_tasks_match_pairs_and_model_outputs(tiny_model, tiny_batch):
    x, t = tiny_batch
    shapes = linear_layer_shapes(tiny_model.linears)
    for projector in (KroneckerProjector.identity(shapes),               # k_out > n: backward push
                      KroneckerProjector.random(shapes, 12, seed=1, out_rows=2)):  # forward push
        fast = FactoredGradientProjector(tiny_model, projector, chunk=5)
        every = fast.project_all_tasks(x)
        assert every.grads.shape == (12, 4, projector.d)
        torch.testing.assert_close(every.logits, tiny_model(x).detach())
        for task in range(4):
            rows = fast.project_pairs(x, torch.full((12,), task))
            torch.testing.assert_close(every.grads[:, task], rows.grads, rtol=1e-5, atol=1e-6)
    push = [FactoredGradientProjector(tiny_model, p)._uses_forward_push() for p in
            (KroneckerProjector.identity(shapes), KroneckerProjector.random(shapes, 12, out_rows=2))]
    assert push == [False, True]


def test_random_kronecker_equals_projection_of_exact_gradients(tiny_model, tiny_batch):
    x, t = tiny_batch
    exact, _ = per_sample_logit_gradients(tiny_model, x, t)
    projector = KroneckerProjector.random(linear_layer_shapes(tiny_model.linears), 30, "rademacher", seed=3)
    out = make_pair_projector(tiny_model, projector)(x, t)
    torch.testing.assert_close(out.grads, projector.project(exact), rtol=1e-5, atol=1e-6)


def test_random_kronecker_inner_products_within_jl_error(tiny_model):
    """Averaged over seeds the estimate is unbiased; one draw errs by O(‖g‖‖g'‖ / √d)."""
    generator = torch.Generator().manual_seed(5)
    x, t = torch.randn(40, 7, generator=generator), torch.randint(0, 4, (40,), generator=generator)
    exact, _ = per_sample_logit_gradients(tiny_model, x, t)
    true = exact @ exact.T
    norms = exact.norm(dim=1)
    scale = norms[:, None] * norms[None, :]
    shapes = linear_layer_shapes(tiny_model.linears)
    d, draws = 64, 60
    estimates = []
    for seed in range(draws):
        out = FactoredGradientProjector(tiny_model, KroneckerProjector.random(shapes, d, seed=seed))(x, t)
        estimates.append(out.grads @ out.grads.T)
    estimates = torch.stack(estimates)
    # single draw: typical error a few / √d of ‖g‖‖g'‖ (rank-1 sketches: variance ≤ ~9x dense)
    single_error = ((estimates[0] - true).abs() / scale).mean()
    assert single_error < 3 / np.sqrt(d)
    # bias: the mean over draws is far closer than one draw
    mean_error = ((estimates.mean(0) - true).abs() / scale).mean()
    assert mean_error < single_error / 3
    corr = np.corrcoef(estimates[0].flatten(), true.flatten())[0, 1]
    assert corr > 0.8


def test_factored_path_rejects_mismatched_projector(tiny_model):
    with pytest.raises(ValueError, match="do not match"):
        FactoredGradientProjector(tiny_model, KroneckerProjector.random([(6, 7, True)], 4))


def test_layer_energy_matches_exact_layer_norms(tiny_model, tiny_batch):
    x, t = tiny_batch
    exact, _ = per_sample_logit_gradients(tiny_model, x, t)
    bounds = np.cumsum([0, 48, 35, 24])
    expected = [float((exact[:, a:b] ** 2).sum(1).mean()) for a, b in zip(bounds[:-1], bounds[1:])]
    np.testing.assert_allclose(layer_gradient_energy(tiny_model, x, t), expected, rtol=1e-5)


def test_mean_centered_random_kronecker_is_unbiased_and_less_noisy(tiny_model, tmp_path):
    from raytag.grads import layer_input_means, projector_from_spec, save_projector
    generator = torch.Generator().manual_seed(6)
    x, t = torch.randn(40, 7, generator=generator) + 2.0, torch.randint(0, 4, (40,), generator=generator)
    exact, _ = per_sample_logit_gradients(tiny_model, x, t)
    true = exact @ exact.T
    shapes, means = linear_layer_shapes(tiny_model.linears), layer_input_means(tiny_model, x)
    errors = {}
    for name, kwargs in (("plain", {}), ("centered", {"input_means": means})):
        estimates = torch.stack([
            (lambda g: g @ g.T)(FactoredGradientProjector(
                tiny_model, KroneckerProjector.random(shapes, 48, seed=s, **kwargs))(x, t).grads)
            for s in range(60)])
        scale = true.abs().mean()
        assert ((estimates.mean(0) - true).abs().mean() / scale) < 0.15       # unbiased (60 draws)
        errors[name] = float((estimates - true).pow(2).mean().sqrt())
    assert errors["centered"] < 0.8 * errors["plain"]
    centered = KroneckerProjector.random(shapes, 48, seed=0, input_means=means)
    rebuilt = projector_from_spec(save_projector(centered, tmp_path), tmp_path)
    torch.testing.assert_close(rebuilt.project(exact), centered.project(exact))
