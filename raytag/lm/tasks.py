"""Text tasks: JSONL files of verbalized-label examples, one file (or folder) per task.

Each line is ``{"input": str, "target": str, "choices": [str, ...]}``; ``choices`` may be left
out when every line of the task has the same label set, which is then the sorted set of the
task's targets (so a task needs at least two distinct targets). A folder task holds one or more
``*.jsonl`` files read in name order. Errors name the file, the line and what was expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

UNUSED, TRAIN, VAL, TEST = 0, 1, 2, 3


class TextTaskError(ValueError):
    """A malformed task file or folder; the message names the file, line and the fix."""


@dataclass(frozen=True)
class TextTask:
    """One task: examples' inputs, targets and candidate lists (target is always a candidate)."""

    name: str
    inputs: list[str]
    targets: list[str]
    choices: list[list[str]]

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def target_index(self) -> np.ndarray:
        """int64 [n]: position of each example's target in its ``choices``."""
        return np.array([c.index(t) for c, t in zip(self.choices, self.targets)], dtype=np.int64)


def _read_lines(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TextTaskError(f"{path}:{number}: not valid JSON ({exc.msg}); expected one object per line "
                                    'like {"input": "...", "target": "...", "choices": ["...", "..."]}') from None
            if not isinstance(record, dict):
                raise TextTaskError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            rows.append((number, record))
    return rows


def _check_record(path: Path, number: int, record: dict) -> None:
    for key in ("input", "target"):
        if not isinstance(record.get(key), str) or (key == "target" and not record[key].strip()):
            raise TextTaskError(f"{path}:{number}: field '{key}' must be a non-empty string, "
                                f"got {record.get(key)!r}")
    unknown = sorted(set(record) - {"input", "target", "choices"})
    if unknown:
        raise TextTaskError(f"{path}:{number}: unknown field(s) {unknown}; allowed: input, target, choices")
    choices = record.get("choices")
    if choices is None:
        return
    if (not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices)
            or len(set(choices)) != len(choices)):
        raise TextTaskError(f"{path}:{number}: 'choices' must be a list of at least 2 distinct non-empty strings, "
                            f"got {choices!r}")
    if record["target"] not in choices:
        raise TextTaskError(f"{path}:{number}: target {record['target']!r} is not one of its choices {choices}")


def load_text_task(path: str | os.PathLike, name: str | None = None) -> TextTask:
    """Read one task from a ``.jsonl`` file or a folder of them."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise TextTaskError(f"task folder {path} holds no *.jsonl files")
    elif path.is_file():
        files = [path]
    else:
        raise TextTaskError(f"task path {path} does not exist")
    records = [(f, n, r) for f in files for n, r in _read_lines(f)]
    if not records:
        raise TextTaskError(f"task {path} has no examples")
    for f, n, r in records:
        _check_record(f, n, r)
    with_choices = [r.get("choices") is not None for _, _, r in records]
    if not all(with_choices):
        if any(with_choices):
            f, n, _ = records[with_choices.index(False)]
            raise TextTaskError(f"{f}:{n}: 'choices' is missing but other lines of task {path} have it; "
                                "give choices on every line or on none")
        labels = sorted({r["target"] for _, _, r in records})
        if len(labels) < 2:
            raise TextTaskError(f"task {path}: without 'choices' the label set is the task's distinct targets, "
                                f"but there is only {labels}; add 'choices' to the lines")
        choices = [labels] * len(records)
    else:
        choices = [list(r["choices"]) for _, _, r in records]
    return TextTask(name or path.stem, [r["input"] for _, _, r in records], [r["target"] for _, _, r in records],
                    choices)


def load_text_tasks(tasks_dir: str | os.PathLike, names: list[str] | None = None) -> list[TextTask]:
    """Every task under ``tasks_dir`` (``NAME.jsonl`` files and ``NAME/`` folders), sorted by name,
    or only ``names`` in that order."""
    root = Path(tasks_dir)
    if not root.is_dir():
        raise TextTaskError(f"data.tasks_dir={str(root)!r} is not a folder of task files")
    found = {p.stem: p for p in root.glob("*.jsonl")}
    found.update({p.name: p for p in root.iterdir() if p.is_dir() and any(p.glob("*.jsonl"))})
    if not found:
        raise TextTaskError(f"data.tasks_dir={str(root)!r} holds no NAME.jsonl files or NAME/ folders")
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise TextTaskError(f"tasks {missing} are not in {root}; available: {sorted(found)}")
    return [load_text_task(found[n], n) for n in (names or sorted(found))]


def split_examples(sizes: list[int], fractions: tuple[float, float, float], seed: int) -> list[np.ndarray]:
    """int8 split code per example of each task (1 train / 2 val / 3 test), seeded per task so a
    task's split does not depend on the other tasks."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or fractions.min() < 0 or abs(fractions.sum() - 1) > 1e-6:
        raise ValueError(f"lm.split_fractions={fractions.tolist()} must be three non-negative numbers "
                         "summing to 1 (train, val, test)")
    out = []
    for task, size in enumerate(sizes):
        counts = np.floor(fractions * size).astype(int)
        counts[0] += size - counts.sum()
        codes = np.repeat(np.array([TRAIN, VAL, TEST], dtype=np.int8), counts)
        out.append(codes[np.random.default_rng((seed, task)).permutation(size)])
    return out
