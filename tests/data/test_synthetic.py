import numpy as np
import pytest
import scipy.sparse as sp

from raytag.data.graph import Graph
from raytag.data.loaders import DataError, read_communities, read_edge_list
from raytag.data.synthetic import _format_ints, generate_planted_graph

NUM_NODES, AVG_DEGREE = 6000, 10
SETTINGS = dict(community_size_range=(30, 600), mean_memberships=1.4, p_in_fraction=0.8)


@pytest.fixture(scope="module")
def planted():
    edges, communities = generate_planted_graph(NUM_NODES, 30, AVG_DEGREE, seed=7, **SETTINGS)
    return edges, communities, Graph.from_edges(edges, num_nodes_hint=NUM_NODES)


def test_seeded_determinism(planted):
    edges, communities, _ = planted
    again, again_communities = generate_planted_graph(NUM_NODES, 30, AVG_DEGREE, seed=7, **SETTINGS)
    other, _ = generate_planted_graph(NUM_NODES, 30, AVG_DEGREE, seed=8, **SETTINGS)
    np.testing.assert_array_equal(edges, again)
    assert all(np.array_equal(a, b) for a, b in zip(communities, again_communities))
    assert edges.shape != other.shape or (edges != other).any()


def test_edge_count_and_coverage(planted):
    edges, communities, graph = planted
    assert len(communities) == 30
    target = NUM_NODES * AVG_DEGREE / 2
    assert abs(graph.num_edges - target) / target < 0.05
    degree = np.asarray(graph.adjacency.sum(axis=1)).ravel()
    assert degree.min() >= 1  # every node appears in the edge list


def test_communities_are_dense_and_hold_most_member_edges(planted):
    _, communities, graph = planted
    graph_density = graph.num_edges / (NUM_NODES * (NUM_NODES - 1) / 2)
    densities = [graph.induced(c).num_edges / (c.size * (c.size - 1) / 2) for c in communities]
    assert np.median(densities) > 10 * graph_density
    # Every community, even the largest, beats a degree-preserving random graph by far.
    degree = np.asarray(graph.adjacency.sum(axis=1)).ravel()
    expected_inside = [degree[c].sum() ** 2 / (4 * graph.num_edges) for c in communities]
    observed_inside = [graph.induced(c).num_edges for c in communities]
    assert min(np.divide(observed_inside, expected_inside)) > 4
    membership = sp.csr_matrix((np.ones(sum(c.size for c in communities)),
                                (np.concatenate(communities), np.repeat(np.arange(30), [c.size for c in communities]))),
                               shape=(NUM_NODES, 30))
    shares_community = graph.adjacency.multiply((membership @ membership.T) > 0)
    is_member = np.asarray(membership.sum(axis=1)).ravel() > 0
    inside = np.asarray(shares_community.sum(axis=1)).ravel()[is_member].sum()
    total = np.asarray(graph.adjacency.sum(axis=1)).ravel()[is_member].sum()
    assert 0.6 < inside / total < 0.85  # p_in_fraction=0.8, less what the caps move out


def test_degrees_are_heavy_tailed(planted):
    _, _, graph = planted
    degree = np.asarray(graph.adjacency.sum(axis=1)).ravel()
    assert degree.max() > 10 * degree.mean()
    assert np.percentile(degree, 99) > 4 * np.median(degree)


def test_streamed_files_read_back_identically(planted, tmp_path):
    edges, communities, _ = planted
    path, streamed_communities = generate_planted_graph(NUM_NODES, 30, AVG_DEGREE, seed=7, out_dir=tmp_path,
                                                        chunk_edges=5000, **SETTINGS)
    np.testing.assert_array_equal(read_edge_list(path), edges)
    from_file = read_communities(tmp_path / "communities.txt")
    assert len(from_file) == len(communities)
    assert all(np.array_equal(a, b) for a, b in zip(from_file, communities))


def test_format_ints_matches_python():
    values = np.array([0, 7, 10, 99, 100, 123456789, 5])
    separators = np.array([9, 10, 9, 10, 9, 10, 10], dtype=np.uint8)
    expected = "".join(f"{v}{chr(s)}" for v, s in zip(values, separators)).encode()
    assert _format_ints(values, separators) == expected


def test_invalid_settings_are_named():
    with pytest.raises(DataError, match=r"mean_memberships=0.5.*degree_exponent=2"):
        generate_planted_graph(100, 2, 4, degree_exponent=2.0, mean_memberships=0.5,
                               community_size_range=(5, 10))
    with pytest.raises(DataError, match="distinct members"):
        generate_planted_graph(100, 20, 4, community_size_range=(50, 60))
