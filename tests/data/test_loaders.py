import gzip
import json

import numpy as np
import pytest

from raytag.data import loaders
from raytag.data.loaders import (
    DataError,
    dblp_paths,
    read_adjacency_list,
    read_communities,
    read_edge_list,
    read_node_labels,
)


def _reference_rows(text: str) -> list[list[str]]:
    """Line-by-line Python parse: the slow way the vectorized readers must agree with."""
    rows = []
    for line in text.splitlines():
        line = line.split("#")[0].split("%")[0]
        tokens = line.replace(",", " ").split()
        if tokens:
            rows.append(tokens)
    return rows


MIXED_EDGES = "# SNAP header\n# Nodes: 5\n0\t1\n1 2\r\n\n  2,3  # inline note\n3\t\t4\t0.5\n% konect comment\n4 0"


def test_edge_list_mixed_separators_comments_and_blank_lines(tmp_path):
    path = tmp_path / "edges.txt"
    path.write_text(MIXED_EDGES)
    edges = read_edge_list(path)
    assert edges.dtype == np.int64
    np.testing.assert_array_equal(edges, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 0]])


def test_edge_list_gzip_matches_plain(tmp_path):
    plain, packed = tmp_path / "e.txt", tmp_path / "e.txt.gz"
    plain.write_text(MIXED_EDGES)
    packed.write_bytes(gzip.compress(MIXED_EDGES.encode()))
    np.testing.assert_array_equal(read_edge_list(packed), read_edge_list(plain))


def test_edge_list_across_chunk_boundaries_matches_python_parse(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    edges = rng.integers(0, 10**12, size=(300, 2))
    separators = rng.choice(["\t", " ", ",", "  "], size=300)
    lines = [f"{u}{s}{v}" for (u, v), s in zip(edges, separators)]
    lines[::17] = ["# comment " + line for line in lines[::17]]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "edges.tsv"
    path.write_text(text)
    monkeypatch.setattr(loaders, "_CHUNK_BYTES", 37)
    expected = np.array([[int(a), int(b)] for a, b in _reference_rows(text)])
    np.testing.assert_array_equal(read_edge_list(path), expected)


def test_edge_list_error_names_file_line_and_text(tmp_path, monkeypatch):
    path = tmp_path / "bad.txt"
    path.write_text("# header\n0 1\n1 2\n7\n2 3\n")
    monkeypatch.setattr(loaders, "_CHUNK_BYTES", 5)  # the bad line's number must survive chunking
    with pytest.raises(DataError, match=r"bad\.txt: line 4: expected two integer node ids.*'7'"):
        read_edge_list(path)


@pytest.mark.parametrize("line", ["1 x", "-1 2", "1.5 2", "1 2 3 4", "1 " + "9" * 19])
def test_edge_list_rejects_malformed_lines(tmp_path, line):
    path = tmp_path / "bad.txt"
    path.write_text(f"0 1\n{line}\n")
    with pytest.raises(DataError, match="line 2") as error:
        read_edge_list(path)
    assert "\n" not in str(error.value)


def test_missing_file_names_path_and_config_field(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=r"nope\.txt.*'data\.edges'"):
        read_edge_list(missing, field="data.edges")
    with pytest.raises(DataError, match="file not found"):
        read_communities(tmp_path / "c.json")


def test_empty_edge_list(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing\n\n")
    assert read_edge_list(path).shape == (0, 2)


def test_communities_one_per_line(tmp_path):
    path = tmp_path / "comms.txt"
    path.write_text("5 3 1\n\n# c\n7,2\n4\t4\t9\n")
    communities = read_communities(path)
    assert [c.tolist() for c in communities] == [[1, 3, 5], [2, 7], [4, 9]]


def test_communities_json_and_gzip_json(tmp_path):
    document = {"communities": [[3, 1, 2], [9, 8], []]}
    (tmp_path / "c.json").write_text(json.dumps(document))
    (tmp_path / "c.json.gz").write_bytes(gzip.compress(json.dumps(document).encode()))
    for name in ("c.json", "c.json.gz"):
        assert [c.tolist() for c in read_communities(tmp_path / name)] == [[1, 2, 3], [8, 9]]


@pytest.mark.parametrize("document", ['{"communities": [[1, "a"]]}', "[1, 2]", "{not json"])
def test_communities_json_errors(tmp_path, document):
    path = tmp_path / "c.json"
    path.write_text(document)
    with pytest.raises(DataError, match=r"c\.json"):
        read_communities(path)


def test_adjacency_list_matches_python_parse(tmp_path, monkeypatch):
    text = "0 1 2 3\n# skip\n1 2\n\n4\n2 0,4\n"
    path = tmp_path / "adj.txt"
    path.write_text(text)
    monkeypatch.setattr(loaders, "_CHUNK_BYTES", 6)
    expected = [[int(row[0]), int(nbr)] for row in _reference_rows(text) for nbr in row[1:]]
    np.testing.assert_array_equal(read_adjacency_list(path), expected)


def test_node_labels_multi_label_strings(tmp_path, monkeypatch):
    text = "10 sports music\n3 music\n\n7 art sports\n3 art\n11\n"
    path = tmp_path / "labels.txt"
    path.write_text(text)
    monkeypatch.setattr(loaders, "_CHUNK_BYTES", 9)
    expected: dict[str, set[int]] = {}
    for row in _reference_rows(text):
        for label in row[1:]:
            expected.setdefault(label, set()).add(int(row[0]))
    labels = read_node_labels(path)
    assert list(labels) == ["sports", "music", "art"]  # first appearance
    assert {k: v.tolist() for k, v in labels.items()} == {k: sorted(v) for k, v in expected.items()}


def test_node_labels_rejects_bad_node_id(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("1 a\nx b\n")
    with pytest.raises(DataError, match="line 2"):
        read_node_labels(path)


def test_vendored_dblp_counts():
    edges_path, communities_path = dblp_paths()
    edges = read_edge_list(edges_path)
    communities = read_communities(communities_path)
    assert edges.shape == (1_049_866, 2)
    assert np.unique(edges).size == 317_080
    assert len(communities) == 13_477
    assert sorted(c.size for c in communities)[-500] >= 309
