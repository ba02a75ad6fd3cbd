"""Where each stage reads and writes inside a run directory, and its done-markers.

A stage is skipped when its marker exists with the same config hash; a changed config
reruns the stage (and everything after it, since their hashes include it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from raytag.io import atomic_write_json, read_json


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    # prepare
    @property
    def config_yaml(self) -> Path: return self.root / "config.yaml"
    @property
    def tasks_json(self) -> Path: return self.root / "tasks.json"
    @property
    def taskset(self) -> Path: return self.root / "prepared" / "taskset.npz"
    @property
    def graph(self) -> Path: return self.root / "prepared" / "graph.npz"
    @property
    def pairs(self) -> Path: return self.root / "prepared" / "pairs.npz"
    @property
    def features(self) -> Path: return self.root / "features" / "x.npy"
    @property
    def features_meta(self) -> Path: return self.root / "features" / "meta.json"
    # train
    @property
    def checkpoint(self) -> Path: return self.root / "model" / "theta_star.pt"
    @property
    def train_metrics(self) -> Path: return self.root / "metrics" / "train.json"
    @property
    def ray_results(self) -> Path: return self.root / "ray_results"
    # project / estimate / affinity / cluster / groups / select / validate / report
    @property
    def grad_store(self) -> Path: return self.root / "grads"
    @property
    def estimate_dir(self) -> Path: return self.root / "estimate"
    @property
    def affinity(self) -> Path: return self.root / "affinity.npy"
    @property
    def affinity_json(self) -> Path: return self.root / "affinity.json"
    @property
    def groups_json(self) -> Path: return self.root / "groups.json"
    @property
    def groups_eval(self) -> Path: return self.root / "groups_eval.json"
    @property
    def validation(self) -> Path: return self.root / "validation.json"
    @property
    def report_html(self) -> Path: return self.root / "report" / "report.html"
    @property
    def timings(self) -> Path: return self.root / "timings.json"

    def select_json(self, task: str) -> Path:
        return self.root / f"select_{task}.json"

    # markers
    def marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def is_done(self, stage: str, config_hash: str) -> bool:
        marker = self.marker(stage)
        return marker.is_file() and read_json(marker).get("config_hash") == config_hash

    def mark_done(self, stage: str, config_hash: str, seconds: float, **extra) -> None:
        atomic_write_json(self.marker(stage), {"config_hash": config_hash, "seconds": round(seconds, 3),
                                              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})
        timings = read_json(self.timings) if self.timings.is_file() else {}
        timings[stage] = round(seconds, 3)
        atomic_write_json(self.timings, timings)

    def load_json(self, path: Path, stage: str) -> dict:
        """Read a stage output, or explain which command produces it."""
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `raytag {stage} --run-dir {self.root}` first")
        with open(path) as handle:
            return json.load(handle)
