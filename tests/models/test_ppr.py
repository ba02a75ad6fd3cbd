"""Personalized PageRank against the dense closed form."""

import numpy as np
import pytest
import scipy.sparse as sp

from raytag.models.ppr import column_normalized_adjacency, personalized_pagerank_scores


def small_graph(seed=0, nodes=40, isolated=1):
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((nodes, nodes)) < 0.12, k=1)
    dense = (upper | upper.T).astype(np.float64)
    return sp.csr_matrix(np.pad(dense, (0, isolated)))


def dense_walk(adj):
    dense = adj.toarray()
    degree = dense.sum(axis=0)
    return dense / np.where(degree > 0, degree, 1.0)


def test_column_normalization():
    adj = small_graph()
    walk = column_normalized_adjacency(adj).toarray()
    np.testing.assert_allclose(walk, dense_walk(adj), rtol=1e-6)
    has_edges = adj.toarray().sum(axis=0) > 0
    assert not has_edges.all()  # the padded node (and any other) is isolated
    np.testing.assert_allclose(walk.sum(axis=0), has_edges.astype(float), rtol=1e-5)


def test_converges_to_the_linear_solve_closed_form():
    adj = small_graph()
    seeds = [np.array([0, 3, 5]), np.array([10]), np.array([2, 2, 7, 40])]  # duplicates count once
    alpha = 0.15
    scores = personalized_pagerank_scores(adj, seeds, alpha=alpha, iters=200)
    assert scores.shape == (41, 3) and scores.dtype == np.float32
    system = np.eye(41) - (1 - alpha) * dense_walk(adj)
    for task, rows in enumerate(seeds):
        restart = np.zeros(41)
        restart[np.unique(rows)] = 1 / np.unique(rows).size
        expected = alpha * np.linalg.solve(system, restart)
        np.testing.assert_allclose(scores[:, task], expected, atol=1e-6)


def test_few_iterations_are_the_truncated_series():
    adj = small_graph(seed=1, isolated=0)
    alpha, iters = 0.3, 3
    walk = (1 - alpha) * dense_walk(adj)
    restart = np.zeros(40)
    restart[[4, 9]] = 0.5
    expected = np.linalg.matrix_power(walk, iters) @ restart + alpha * sum(
        np.linalg.matrix_power(walk, k) @ restart for k in range(iters)
    )
    scores = personalized_pagerank_scores(adj, [np.array([4, 9])], alpha=alpha, iters=iters)
    np.testing.assert_allclose(scores[:, 0], expected, atol=1e-6)
    # On a connected graph the walk keeps all its mass.
    assert scores.sum() == pytest.approx(1.0, abs=1e-5)


def test_rejects_bad_seeds_and_parameters():
    adj = small_graph()
    with pytest.raises(ValueError, match=r"seed_rows_per_task\[1\] is empty"):
        personalized_pagerank_scores(adj, [np.array([1]), np.array([], dtype=np.int64)])
    with pytest.raises(ValueError, match="outside"):
        personalized_pagerank_scores(adj, [np.array([41])])
    with pytest.raises(ValueError, match="alpha"):
        personalized_pagerank_scores(adj, [np.array([1])], alpha=0.0)
