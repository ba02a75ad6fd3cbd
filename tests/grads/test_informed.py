import torch

from raytag.grads import (DenseProjector, FactoredGradientProjector, KroneckerProjector,
                          exact_gradient_chunks, fit_kfac_projector, fit_svd_projector,
                          linear_layer_shapes, per_sample_logit_gradients, subspace_energy)
from raytag.models import SignMLP


def low_rank_gradients(n_rows, D=300, rank=5, seed=0):
    """Gradients in a known rank-5 subspace (decaying scales) plus 1% isotropic noise."""
    generator = torch.Generator().manual_seed(seed)
    subspace = torch.linalg.qr(torch.randn(D, rank, generator=torch.Generator().manual_seed(99))).Q
    coefficients = torch.randn(n_rows, rank, generator=generator) * torch.tensor([5.0, 4, 3, 2, 1])
    return coefficients @ subspace.T + 0.01 * torch.randn(n_rows, D, generator=generator), subspace


def test_svd_projector_finds_the_gradient_subspace():
    train, subspace = low_rank_gradients(80)
    held_out, _ = low_rank_gradients(40, seed=1)
    projector = fit_svd_projector(lambda: [train[:30], train[30:]], d=5, seed=0)
    overlap = float((subspace.T @ projector.basis).norm() ** 2)          # 5 when spans agree
    assert overlap > 4.95
    torch.testing.assert_close(projector.basis.T @ projector.basis, torch.eye(5), atol=1e-5, rtol=0)
    informed = subspace_energy(held_out, projector)
    random = subspace_energy(held_out, DenseProjector(300, 5, "gaussian", seed=0))
    assert informed > 0.99 and random < 0.1
    assert projector.spec()["source"] == "svd" and projector.spec()["fit_energy_captured"] > 0.99


def test_svd_projector_on_exact_model_gradients(tmp_path):
    torch.manual_seed(0)
    model = SignMLP(6, [5], 3)
    generator = torch.Generator().manual_seed(2)
    x, t = torch.randn(50, 6, generator=generator), torch.randint(0, 3, (50,), generator=generator)
    chunks = exact_gradient_chunks(model, x, t, chunk=16)
    projector = fit_svd_projector(chunks, d=8, power_iters=3)
    grads, _ = per_sample_logit_gradients(model, x, t)
    # the top-8 right singular vectors by a direct SVD capture the same energy
    s = torch.linalg.svdvals(grads.double())
    best = float((s[:8] ** 2).sum() / (s ** 2).sum())
    assert abs(subspace_energy(grads, projector) - best) < 1e-3


def low_rank_input_model():
    """Inputs on a 2-dim subspace of R^12 and a 4-task head: gradients are highly structured."""
    torch.manual_seed(0)
    model = SignMLP(12, [10, 8], 4)
    generator = torch.Generator().manual_seed(3)
    mixing = torch.randn(2, 12, generator=generator)

    def sample(n, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, 2, generator=g) @ mixing, torch.randint(0, 4, (n,), generator=g)
    return model, sample


def test_kfac_projector_captures_more_energy_than_random_kronecker():
    model, sample = low_rank_input_model()
    fit_x, fit_t = sample(400, 1)
    test_x, test_t = sample(100, 2)
    held_out, _ = per_sample_logit_gradients(model, test_x, test_t)
    shapes = linear_layer_shapes(model.linears)
    d = 12
    kfac = fit_kfac_projector(model, fit_x, fit_t, d)
    plain = fit_kfac_projector(model, fit_x, fit_t, d, eigenvalue_correction=False)
    random = KroneckerProjector.random(shapes, d, seed=0)
    e_kfac, e_plain, e_random = (subspace_energy(held_out, p) for p in (kfac, plain, random))
    assert e_kfac > 0.8 and e_plain > 0.6
    assert e_kfac > 3 * e_random
    assert kfac.d == d and kfac.spec()["source"] == "kfac"
    # orthonormal: projected norms never exceed the gradient norms, and equal the subspace part
    out = FactoredGradientProjector(model, kfac)(test_x, test_t).grads
    assert abs(float((out ** 2).sum() / (held_out ** 2).sum()) - e_kfac) < 1e-4


def test_kfac_with_every_component_is_exact():
    model, sample = low_rank_input_model()
    x, t = sample(60, 4)
    D = sum(p.numel() for p in model.parameters())
    projector = fit_kfac_projector(model, x, t, D)
    grads, _ = per_sample_logit_gradients(model, x, t)
    out = FactoredGradientProjector(model, projector)(x, t).grads
    torch.testing.assert_close(out @ out.T, grads @ grads.T, rtol=1e-4, atol=1e-4)
