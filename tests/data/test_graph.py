import numpy as np
import pytest

from raytag.data.graph import Graph
from raytag.data.loaders import DataError


def _dense_reference(edges, node_ids):
    position = {int(node): row for row, node in enumerate(node_ids)}
    dense = np.zeros((len(node_ids), len(node_ids)))
    for u, v in edges:
        if u != v:
            dense[position[u], position[v]] = dense[position[v], position[u]] = 1
    return dense


@pytest.mark.parametrize("id_range", [100, 10**12])  # lookup-table and sort relabelling
def test_from_edges_symmetric_binary_without_loops_or_duplicates(id_range):
    rng = np.random.default_rng(0)
    ids = rng.choice(id_range, size=40, replace=False)
    edges = ids[rng.integers(0, 40, size=(200, 2))]
    edges = np.concatenate([edges, edges[:30], edges[:10, ::-1], np.stack([ids[:3], ids[:3]], 1)])
    graph = Graph.from_edges(edges)
    np.testing.assert_array_equal(graph.node_ids, np.unique(edges))
    dense = _dense_reference(edges, graph.node_ids)
    np.testing.assert_array_equal(graph.adjacency.toarray(), dense)
    assert graph.num_edges == dense.sum() / 2
    assert graph.adjacency.has_canonical_format


def test_num_nodes_hint_keeps_isolated_nodes_and_checks_range():
    graph = Graph.from_edges(np.array([[0, 2], [2, 0]]), num_nodes_hint=4)
    assert graph.num_nodes == 4 and graph.num_edges == 1
    with pytest.raises(DataError, match="num_nodes_hint"):
        Graph.from_edges(np.array([[0, 5]]), num_nodes_hint=4)


def test_index_of_and_unknown_ids():
    graph = Graph.from_edges(np.array([[10, 30], [30, 50]]))
    np.testing.assert_array_equal(graph.index_of(np.array([50, 10])), [2, 0])
    with pytest.raises(DataError, match=r"2 node id\(s\) not in the graph.*\[20, 99\]"):
        graph.index_of(np.array([10, 20, 99]))


def test_induced_matches_dense_submatrix():
    rng = np.random.default_rng(1)
    edges = rng.integers(0, 30, size=(120, 2))
    graph = Graph.from_edges(edges)
    rows = np.array([7, 3, 3, 20, 11, 0])
    sub = graph.induced(rows)
    keep = np.unique(rows)
    np.testing.assert_array_equal(sub.node_ids, graph.node_ids[keep])
    np.testing.assert_array_equal(sub.adjacency.toarray(), graph.adjacency.toarray()[np.ix_(keep, keep)])
