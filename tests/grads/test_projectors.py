import json

import numpy as np
import pytest
import torch

from raytag.grads import (BasisProjector, DenseProjector, KroneckerProjector, projector_from_spec,
                          save_projector)
from raytag.grads.projectors import allocate_dims

SHAPES = [(6, 7, True), (5, 6, True), (4, 5, True)]


def test_dense_matrix_is_independent_of_chunking_and_regenerates():
    D, d = 2500, 6                                         # spans three generation blocks
    a = DenseProjector(D, d, seed=3, chunk_rows=1024, cache_bytes=0).matrix()
    b = DenseProjector(D, d, seed=3, chunk_rows=4096).matrix()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, DenseProjector(D, d, seed=4).matrix())
    torch.testing.assert_close(a.abs(), torch.full_like(a, 1 / np.sqrt(d)))   # the seed's ±1/√d
    g = torch.randn(3, D)
    torch.testing.assert_close(DenseProjector(D, d, seed=3, cache_bytes=0).project(g), g @ a)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_dense_projection_keeps_inner_products_in_expectation(kind):
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(2, 300, generator=generator)
    estimates = torch.stack([
        (lambda p: p[0] @ p[1])(DenseProjector(300, 20, kind, seed=s).project(g)) for s in range(300)])
    true = g[0] @ g[1]
    standard_error = estimates.std() / np.sqrt(len(estimates))
    assert abs(estimates.mean() - true) < 4 * standard_error
    assert estimates.std() > 0.1 * g[0].norm() * g[1].norm() / np.sqrt(20)   # a real random map


def test_back_project_is_the_transpose():
    generator = torch.Generator().manual_seed(2)
    D = sum(o * (i + 1) for o, i, _ in SHAPES)
    basis = torch.linalg.qr(torch.randn(D, 5, generator=generator)).Q
    for projector in (DenseProjector(D, 8, "gaussian", seed=1), BasisProjector(basis),
                      KroneckerProjector.random(SHAPES, 9, seed=1, out_rows=2),
                      KroneckerProjector.identity(SHAPES)):
        g = torch.randn(4, D, generator=generator)
        w = torch.randn(3, projector.d, generator=generator)
        torch.testing.assert_close(projector.project(g) @ w.T, g @ projector.back_project(w).T,
                                   rtol=1e-4, atol=1e-4)


def test_specs_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(3)
    D = sum(o * (i + 1) for o, i, _ in SHAPES)
    informed = KroneckerProjector(SHAPES, [torch.randn(2, o, generator=generator) for o, _, _ in SHAPES],
                                  [torch.randn(3, i + 1, generator=generator) for _, i, _ in SHAPES],
                                  [([0, 1, 1], [2, 0, 1])] * 3, info={"source": "kfac"})
    projectors = [DenseProjector(D, 7, "gaussian", seed=9), KroneckerProjector.random(SHAPES, 10, seed=5),
                  KroneckerProjector.identity(SHAPES), BasisProjector(torch.randn(D, 4, generator=generator)),
                  informed]
    g = torch.randn(3, D, generator=generator)
    for projector in projectors:
        spec = json.loads(json.dumps(save_projector(projector, tmp_path)))   # JSON-able
        rebuilt = projector_from_spec(spec, tmp_path)
        assert rebuilt.spec() == spec
        torch.testing.assert_close(rebuilt.project(g), projector.project(g))
    assert informed.d == 9 and informed.spec()["arrays_hash"]


def test_spec_with_missing_or_changed_arrays_is_refused(tmp_path):
    projector = BasisProjector(torch.eye(6)[:, :2])
    spec = save_projector(projector, tmp_path)
    with pytest.raises(ValueError, match="directory"):
        projector_from_spec(spec)
    np.save(tmp_path / spec["arrays"]["basis"], np.eye(6, dtype=np.float32)[:, 1:3])
    with pytest.raises(ValueError, match="arrays_hash"):
        projector_from_spec(spec, tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        projector_from_spec({"type": "nope", "d": 1, "D": 1})


def test_allocate_dims():
    assert allocate_dims(10, [1, 1, 2]) == [3, 2, 5]
    assert allocate_dims(200, [99328, 32896, 12900]) == [137, 45, 18]
    dims = allocate_dims(5, [1000, 1, 1])
    assert sum(dims) == 5 and min(dims) == 1
    with pytest.raises(ValueError, match="d=0"):
        allocate_dims(0, [1, 2])


def test_kronecker_random_total_dims_and_errors():
    projector = KroneckerProjector.random(SHAPES, 17, seed=0, out_rows=3)
    assert projector.d == 17 and sum(projector.layer_dims) == 17
    assert all(r.shape[0] <= 3 for r in projector.r_out)
    with pytest.raises(ValueError, match="kind"):
        KroneckerProjector.random(SHAPES, 5, kind="sparse")
    with pytest.raises(ValueError, match="layer_dims"):
        KroneckerProjector.random(SHAPES, 5, layer_dims=[1, 1, 1])


def test_kronecker_projection_flops_count_both_factors_and_the_kept_products():
    projector = KroneckerProjector.random(SHAPES, 17, seed=0, out_rows=3)
    expected = sum(2 * (ro.shape[0] * out + ri.shape[0] * (inp + bias)) + d_l
                   for (out, inp, bias), ro, ri, d_l in zip(SHAPES, projector.r_out, projector.r_in,
                                                            projector.layer_dims))
    assert projector.projection_flops() == expected
