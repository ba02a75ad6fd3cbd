import numpy as np
import pytest

from raytag.data.graph import Graph
from raytag.data.loaders import DataError
from raytag.data.tasks import TEST, TRAIN, UNUSED, VAL, TaskSet, _nth_non_members, build_tasks


@pytest.fixture
def graph_and_communities():
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(10**6, size=400, replace=False))
    edges = ids[rng.integers(0, 400, size=(3000, 2))]
    graph = Graph.from_edges(edges)
    sizes = [30, 60, 45, 60, 12, 80]
    communities = [rng.choice(graph.node_ids[:300], size=s, replace=False) for s in sizes]
    return graph, communities


def test_seeds_regime_tasks_subgraph_and_splits(graph_and_communities):
    graph, communities = graph_and_communities
    tasks, sub = build_tasks(graph, communities, num_tasks=4, regime="seeds", seeds_per_task=10, seed=3)
    assert tasks.names == ["c5", "c1", "c3", "c2"]  # by size, ties (c1, c3) by index
    chosen = [communities[i] for i in (5, 1, 3, 2)]
    union = np.unique(np.concatenate(chosen))
    np.testing.assert_array_equal(tasks.nodes, union)
    np.testing.assert_array_equal(sub.node_ids, union)
    keep = graph.index_of(union)
    np.testing.assert_array_equal(sub.adjacency.toarray(), graph.adjacency.toarray()[np.ix_(keep, keep)])
    for t, members in enumerate(chosen):
        is_member = np.isin(tasks.nodes, members)
        np.testing.assert_array_equal(tasks.labels[:, t], is_member.astype(np.uint8))
        column = tasks.split[:, t]
        assert (column != UNUSED).all()
        positive_counts = [np.sum(column[is_member] == code) for code in (TRAIN, VAL, TEST)]
        assert positive_counts == [10, round(0.2 * members.size), members.size - 10 - round(0.2 * members.size)]
        negatives = np.sum(~is_member)
        negative_counts = np.array([np.sum(column[~is_member] == code) for code in (TRAIN, VAL, TEST)])
        assert negative_counts.sum() == negatives
        assert np.abs(negative_counts - np.array([0.2, 0.2, 0.6]) * negatives).max() < 1


def test_splits_are_seeded(graph_and_communities):
    graph, communities = graph_and_communities
    a, _ = build_tasks(graph, communities, num_tasks=3, regime="seeds", seed=1)
    b, _ = build_tasks(graph, communities, num_tasks=3, regime="seeds", seed=1)
    c, _ = build_tasks(graph, communities, num_tasks=3, regime="seeds", seed=2)
    np.testing.assert_array_equal(a.split, b.split)
    assert (a.split != c.split).any()


def test_balanced_regime_caps_and_samples_non_members(graph_and_communities):
    graph, communities = graph_and_communities
    tasks, same_graph = build_tasks(graph, communities, num_tasks=3, regime="balanced",
                                    max_positives_per_task=50, negative_ratio=1.5, seed=0)
    assert same_graph is graph
    np.testing.assert_array_equal(tasks.nodes, graph.node_ids)
    for t, members in enumerate([communities[i] for i in (5, 1, 3)]):
        is_member = np.isin(tasks.nodes, members)
        np.testing.assert_array_equal(tasks.labels[:, t], is_member.astype(np.uint8))
        used = tasks.split[:, t] != UNUSED
        num_positives = min(members.size, 50)
        assert np.sum(used & is_member) == num_positives
        assert np.sum(used & ~is_member) == round(1.5 * num_positives)
        for group in (is_member, ~is_member):
            counts = np.array([np.sum(group & (tasks.split[:, t] == code)) for code in (TRAIN, VAL, TEST)])
            assert np.abs(counts - np.array([0.6, 0.2, 0.2]) * counts.sum()).max() < 1


def test_dict_labels_use_label_names(graph_and_communities):
    graph, communities = graph_and_communities
    labels = {"small": communities[0], "big": communities[5], "mid": communities[2]}
    tasks, _ = build_tasks(graph, labels, num_tasks=2, regime="seeds")
    assert tasks.names == ["big", "mid"]


def test_errors(graph_and_communities):
    graph, communities = graph_and_communities
    with pytest.raises(DataError, match="num_tasks=7 but only 6"):
        build_tasks(graph, communities, num_tasks=7, regime="seeds")
    with pytest.raises(DataError, match="'c4' has 12 members.*at least seeds_per_task \\+ 2 = 13"):
        build_tasks(graph, communities, num_tasks=6, regime="seeds", seeds_per_task=11)
    with pytest.raises(DataError, match="regime='mixed'"):
        build_tasks(graph, communities, num_tasks=2, regime="mixed")
    with pytest.raises(DataError, match="negative_fractions"):
        build_tasks(graph, communities, num_tasks=2, regime="seeds", negative_fractions=(0.5, 0.5, 0.5))
    unknown = {"ok": communities[5], "bad": np.r_[communities[1], 10**7]}
    with pytest.raises(DataError, match=r"'bad'.*not in the graph.*\[10000000\]"):
        build_tasks(graph, unknown, num_tasks=2, regime="seeds")


def test_nth_non_members_matches_setdiff():
    rng = np.random.default_rng(0)
    members = np.sort(rng.choice(100, size=37, replace=False))
    non_members = np.setdiff1d(np.arange(100), members)
    ranks = rng.permutation(non_members.size)[:20]
    np.testing.assert_array_equal(_nth_non_members(members, ranks), non_members[ranks])


def test_save_load_roundtrip_and_summary(graph_and_communities, tmp_path):
    graph, communities = graph_and_communities
    tasks, _ = build_tasks(graph, communities, num_tasks=3, regime="seeds")
    tasks.save(tmp_path / "tasks.npz")
    loaded = TaskSet.load(tmp_path / "tasks.npz")
    for field in ("nodes", "labels", "split"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(tasks, field))
        assert getattr(loaded, field).dtype == getattr(tasks, field).dtype
    assert loaded.names == tasks.names and loaded.regime == "seeds"
    summary = loaded.summary()
    assert summary["num_tasks"] == 3 and summary["num_nodes"] == tasks.nodes.size
    first = summary["tasks"][0]
    assert first["name"] == "c5" and first["members"] == 80 and first["train_positives"] == 10
    total = sum(value for key, value in first.items() if key.endswith(("positives", "negatives")))
    assert total == tasks.nodes.size
