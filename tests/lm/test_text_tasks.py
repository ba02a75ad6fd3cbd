"""Text task loader: formats, clear errors naming file and line, seeded splits, vendored data."""

import json

import numpy as np
import pytest

from raytag.lm.config import VENDORED_TASKS, LMConfig
from raytag.lm.tasks import TextTaskError, load_text_task, load_text_tasks, split_examples


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_choices_inferred_from_targets_and_folder_tasks(tmp_path):
    write_lines(tmp_path / "a.jsonl", [{"input": "x", "target": "yes"}, {"input": "y", "target": "no"}])
    folder = tmp_path / "b"
    folder.mkdir()
    write_lines(folder / "1.jsonl", [{"input": "p", "target": "B", "choices": ["A", "B", "C"]}])
    write_lines(folder / "2.jsonl", [{"input": "q", "target": "A", "choices": ["A", "B"]}])
    tasks = load_text_tasks(tmp_path)
    assert [t.name for t in tasks] == ["a", "b"]
    assert tasks[0].choices == [["no", "yes"], ["no", "yes"]]
    assert tasks[0].target_index.tolist() == [1, 0]
    assert tasks[1].inputs == ["p", "q"] and tasks[1].target_index.tolist() == [1, 0]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ({"input": "x"}, "field 'target' must be a non-empty string"),
    ({"input": 3, "target": "a"}, "field 'input'"),
    ({"input": "x", "target": "a", "extra": 1}, "unknown field"),
    ({"input": "x", "target": "a", "choices": ["a"]}, "at least 2 distinct"),
    ({"input": "x", "target": "z", "choices": ["a", "b"]}, "is not one of its choices"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "t.jsonl", [{"input": "ok", "target": "a", "choices": ["a", "b"]}, line])
    with pytest.raises(TextTaskError, match=message) as info:
        load_text_task(path)
    assert f"{path}:2" in str(info.value)


def test_mixed_choices_and_single_label_are_rejected(tmp_path):
    mixed = write_lines(tmp_path / "m.jsonl", [{"input": "x", "target": "a", "choices": ["a", "b"]},
                                               {"input": "y", "target": "a"}])
    with pytest.raises(TextTaskError, match=r"m.jsonl:2: 'choices' is missing"):
        load_text_task(mixed)
    single = write_lines(tmp_path / "s.jsonl", [{"input": "x", "target": "a"}, {"input": "y", "target": "a"}])
    with pytest.raises(TextTaskError, match="only \\['a'\\]"):
        load_text_task(single)
    with pytest.raises(TextTaskError, match="not in"):
        load_text_tasks(tmp_path, ["nope"])
    with pytest.raises(TextTaskError, match="not a folder"):
        load_text_tasks(tmp_path / "missing")


def test_splits_are_seeded_per_task_with_the_right_sizes():
    first = split_examples([10, 7], (0.6, 0.2, 0.2), seed=3)
    again = split_examples([10, 99], (0.6, 0.2, 0.2), seed=3)
    assert np.array_equal(first[0], again[0])  # a task's split ignores the other tasks
    assert np.bincount(first[0], minlength=4).tolist() == [0, 6, 2, 2]
    assert np.bincount(first[1], minlength=4)[1:].sum() == 7
    assert not np.array_equal(first[0], split_examples([10], (0.6, 0.2, 0.2), seed=4)[0])
    with pytest.raises(ValueError, match="split_fractions"):
        split_examples([5], (0.5, 0.5, 0.5), seed=0)
    with pytest.raises(ValueError, match="split_fractions"):
        LMConfig(split_fractions=(0.9, 0.2, 0.0))


def test_vendored_bigbench_tasks_load():
    tasks = load_text_tasks(VENDORED_TASKS)
    assert len(tasks) >= 10
    for task in tasks:
        assert len(task) >= 200
        assert all(t in c for t, c in zip(task.targets, task.choices))
