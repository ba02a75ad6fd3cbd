"""Structural features checked against dense linear algebra on tiny graphs."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import torch

from raytag.data.features import (
    compute_node_features,
    fastrp_embedding,
    log_degree,
    normalized_adjacency,
    sign_features,
    spectral_embedding,
    standardize_columns,
)


def planted_partition(sizes, p_in, p_out, seed, isolated=0):
    """Symmetric 0/1 adjacency of a stochastic block model, plus ``isolated`` edgeless nodes."""
    rng = np.random.default_rng(seed)
    block = np.repeat(np.arange(len(sizes)), sizes)
    prob = np.where(block[:, None] == block[None, :], p_in, p_out)
    upper = np.triu(rng.random(prob.shape) < prob, k=1)
    dense = (upper | upper.T).astype(np.float32)
    dense = np.pad(dense, (0, isolated))
    return sp.csr_matrix(dense)


def dense_normalized(adj):
    dense = adj.toarray().astype(np.float64) + np.eye(adj.shape[0])
    degree = dense.sum(axis=1)
    return dense / np.sqrt(np.outer(degree, degree))


def test_normalized_adjacency_matches_dense_formula_and_keeps_isolated_rows_finite():
    adj = planted_partition([20, 20], 0.4, 0.05, seed=0, isolated=2)
    np.testing.assert_allclose(normalized_adjacency(adj).toarray(), dense_normalized(adj), atol=1e-6)
    without_loops = normalized_adjacency(adj, self_loops=False).toarray()
    assert np.isfinite(without_loops).all()
    assert not without_loops[-2:].any()
    degree = adj.toarray().sum(axis=1)
    inner = degree[:-2]
    expected = adj.toarray()[:-2, :-2] / np.sqrt(np.outer(inner, inner))
    np.testing.assert_allclose(without_loops[:-2, :-2], expected, atol=1e-6)


def test_spectral_subspace_matches_dense_eigh():
    adj = planted_partition([50] * 6, 0.3, 0.01, seed=1)
    dim = 6
    result = spectral_embedding(adj, dim, oversample=10, tol=1e-5, iters=100, seed=3)
    values, vectors = np.linalg.eigh(dense_normalized(adj))
    top = np.argsort(-values)[:dim]
    np.testing.assert_allclose(result.values, values[top], atol=1e-5)
    angles = scipy.linalg.subspace_angles(result.vectors.astype(np.float64), vectors[:, top])
    assert angles.max() < 1e-3
    assert result.residuals.max() <= 1e-5
    np.testing.assert_allclose(result.vectors.T @ result.vectors, np.eye(dim), atol=1e-5)
    # The reported residuals are the true ones.
    dense = dense_normalized(adj)
    true_residuals = np.linalg.norm(dense @ result.vectors - result.vectors * result.values, axis=0)
    np.testing.assert_allclose(result.residuals, true_residuals, atol=2e-6)


def test_spectral_eigenvalues_on_a_graph_without_a_clear_gap():
    rng = np.random.default_rng(5)
    upper = sp.triu(sp.random(400, 400, density=0.02, random_state=rng, data_rvs=np.ones), k=1)
    adj = ((upper + upper.T) > 0).astype(np.float32)
    connected = np.asarray(adj.sum(axis=1)).ravel() > 0
    adj = adj[connected][:, connected].tocsr()
    result = spectral_embedding(adj, 12, oversample=12, tol=1e-4, iters=200)
    values = np.sort(np.linalg.eigvalsh(dense_normalized(adj)))[::-1][:12]
    # A Ritz value is within its residual of an eigenvalue; converged pairs are the top ones.
    np.testing.assert_allclose(result.values, values, atol=2e-4)


def test_chebyshev_filter_is_the_chebyshev_polynomial_of_the_shifted_matrix():
    from raytag.data.features import _chebyshev_filter, _torch_csr

    adj = planted_partition([12, 12], 0.4, 0.1, seed=11)
    values, vectors = np.linalg.eigh(dense_normalized(adj))
    block = np.random.default_rng(2).standard_normal((24, 3)).astype(np.float32)
    cut, degree = 0.3, 5
    mapped = (values - (cut - 1) / 2) / ((cut + 1) / 2)  # [-1, cut] -> [-1, 1]
    polynomial = np.polynomial.chebyshev.chebval(mapped, [0] * degree + [1])
    expected = vectors @ (polynomial[:, None] * (vectors.T @ block))
    matrix = _torch_csr(normalized_adjacency(adj), torch.device("cpu"))
    result = _chebyshev_filter(matrix, torch.from_numpy(block), degree, cut).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4)


def test_spectral_methods_agree_and_seed_is_deterministic():
    adj = planted_partition([40] * 5, 0.35, 0.02, seed=2)
    subspace = spectral_embedding(adj, 5, oversample=8, tol=1e-6, iters=200)
    arpack = spectral_embedding(adj, 5, method="arpack", tol=1e-9)
    dense = spectral_embedding(adj, 5, method="dense")
    np.testing.assert_allclose(subspace.values, dense.values, atol=1e-6)
    np.testing.assert_allclose(arpack.values, dense.values, atol=1e-6)
    # Separated eigenvalues + the sign convention: the vectors themselves agree.
    np.testing.assert_allclose(arpack.vectors, dense.vectors, atol=1e-4)
    again = spectral_embedding(adj, 5, oversample=8, tol=1e-6, iters=200)
    np.testing.assert_array_equal(subspace.vectors, again.vectors)


def test_spectral_handles_components_and_isolated_nodes():
    adj = sp.block_diag([planted_partition([30, 30], 0.3, 0.02, seed=s) for s in (7, 8)]).tocsr()
    adj = sp.block_diag([adj, sp.csr_matrix((4, 4))]).tocsr()  # 4 isolated nodes at the end
    result = spectral_embedding(adj, 4, oversample=8, tol=1e-5, iters=200)
    assert np.isfinite(result.vectors).all() and np.isfinite(result.values).all()
    assert not result.vectors[-4:].any()
    # Two components: eigenvalue 1 twice, then each component's community split.
    np.testing.assert_allclose(result.values[:2], 1.0, atol=1e-5)
    reference = np.sort(np.linalg.eigvalsh(dense_normalized(adj[:-4, :-4])))[::-1][:4]
    np.testing.assert_allclose(result.values, reference, atol=1e-5)
    # Fewer non-isolated nodes than dim: the extra columns are zero, nothing is NaN.
    tiny = sp.csr_matrix(np.pad(np.array([[0, 1], [1, 0]], dtype=np.float32), (0, 3)))
    small = spectral_embedding(tiny, 4)
    assert np.isfinite(small.vectors).all() and not small.vectors[:, 2:].any()


def test_spectral_rejects_bad_input():
    adj = planted_partition([10, 10], 0.5, 0.1, seed=0)
    with pytest.raises(ValueError, match="symmetric"):
        spectral_embedding(sp.triu(adj).tocsr(), 2)
    with pytest.raises(ValueError, match="dim"):
        spectral_embedding(adj, 21)
    with pytest.raises(ValueError, match="method"):
        spectral_embedding(adj, 2, method="lobpcg")
    with pytest.raises(ValueError, match="square"):
        spectral_embedding(sp.csr_matrix((3, 4)), 2)
    with pytest.raises(ValueError, match="scipy.sparse"):
        spectral_embedding(adj.toarray(), 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_spectral_on_gpu_matches_cpu():
    adj = planted_partition([60] * 5, 0.3, 0.01, seed=4)
    cpu = spectral_embedding(adj, 5, oversample=8, tol=1e-5, iters=100)
    gpu = spectral_embedding(adj, 5, oversample=8, tol=1e-5, iters=100, device="cuda")
    np.testing.assert_allclose(gpu.values, cpu.values, atol=1e-5)
    assert scipy.linalg.subspace_angles(gpu.vectors, cpu.vectors).max() < 1e-3


def test_log_degree_counts_neighbours_without_self_loops():
    edges = np.array([[0, 1], [0, 2], [1, 2], [2, 3]])
    adj = sp.coo_matrix((np.ones(8), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])), shape=(5, 5))
    adj = (adj + sp.diags([0.0, 0.0, 1.0, 0.0, 0.0])).tocsr()  # a self-loop on node 2 is not a neighbour
    expected = np.log1p(np.bincount(edges.ravel(), minlength=5))
    result = log_degree(adj)
    assert result.shape == (5, 1) and result.dtype == np.float32
    np.testing.assert_allclose(result[:, 0], expected, rtol=1e-6)


def test_sign_features_match_dense_powers():
    adj = planted_partition([15, 15], 0.4, 0.1, seed=6)
    x = np.random.default_rng(0).standard_normal((30, 3)).astype(np.float32)
    adj_norm = normalized_adjacency(adj)
    dense = dense_normalized(adj)
    expected = np.hstack([x, dense @ x, dense @ dense @ x, dense @ dense @ dense @ x])
    result = sign_features(x, adj_norm, hops=3)
    assert result.dtype == np.float32 and result.shape == (30, 12)
    np.testing.assert_allclose(result, expected, atol=1e-5)
    np.testing.assert_array_equal(sign_features(x, adj_norm, hops=0), x)
    with pytest.raises(ValueError, match="rows"):
        sign_features(x[:-1], adj_norm)


def test_fastrp_preserves_cosines_of_normalized_adjacency_powers():
    """FastRP is a JL projection of the rows of Â^k: with many dims, its cosines match."""
    adj = planted_partition([20, 20, 20], 0.3, 0.03, seed=9)
    dense = dense_normalized(adj)
    power = np.linalg.matrix_power(dense, 3)
    target = power / np.linalg.norm(power, axis=1, keepdims=True)
    embedding = fastrp_embedding(adj, 4096, weights=(0.0, 0.0, 1.0), seed=1)
    assert embedding.dtype == np.float32 and embedding.shape == (60, 4096)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedding @ embedding.T, target @ target.T, atol=0.1)
    two_terms = fastrp_embedding(adj, 64, weights=(0.0, 0.0, 1.0, 1.0), seed=1)
    assert np.isfinite(two_terms).all() and two_terms.shape == (60, 64)
    with pytest.raises(ValueError, match="weights"):
        fastrp_embedding(adj, 8, weights=())


def test_standardize_columns_in_place():
    x = np.random.default_rng(1).normal(3.0, 5.0, size=(50, 40)).astype(np.float32)
    x[:, 7] = 2.0  # a constant column becomes zero, not NaN
    expected = (x.astype(np.float64) - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1)
    result = standardize_columns(x)
    assert result is x
    np.testing.assert_allclose(x, expected, atol=1e-5)
    assert not x[:, 7].any()


@pytest.mark.parametrize("method", ["spectral", "fastrp"])
def test_compute_node_features_is_sign_of_embedding_plus_log_degree(method):
    adj = sp.block_diag([planted_partition([25, 25], 0.3, 0.03, seed=10), sp.csr_matrix((2, 2))]).tocsr()
    dim, hops = 4, 2
    raw = compute_node_features(adj, method=method, dim=dim, hops=hops, seed=0, standardize=False)
    assert raw.dtype == np.float32 and raw.shape == (52, (dim + 1) * (hops + 1))
    if method == "spectral":
        base = spectral_embedding(adj, dim, seed=0).vectors
    else:
        base = fastrp_embedding(adj, dim, seed=0)
    base = np.hstack([base, np.log1p(adj.toarray().sum(axis=1, keepdims=True))])
    dense = dense_normalized(adj)
    np.testing.assert_allclose(raw, np.hstack([base, dense @ base, dense @ dense @ base]), atol=1e-5)
    messages = []
    standardized = compute_node_features(adj, method=method, dim=dim, hops=hops, seed=0, progress=messages.append)
    assert np.isfinite(standardized).all() and messages
    np.testing.assert_allclose(standardized.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(axis=0), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="method"):
        compute_node_features(adj, method="node2vec")
