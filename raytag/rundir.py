"""Where each stage reads and writes inside a run directory, and its done-markers.

A stage is skipped when its marker exists with the same config hash; a changed config
reruns the stage (and everything after it, since their hashes include it).

A run directory is a local path (used in place, nothing is copied) or a URI such as
``s3://bucket/prefix`` (see :mod:`raytag.storage`): then ``root`` is this node's working
copy, and ``pull`` / ``push`` / ``remove`` keep it and the URI in step.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from raytag.io import atomic_write_json, read_json
from raytag.storage import RemoteRunDir, RunDirError, is_uri, remove_local


@dataclass(frozen=True)
class RunDir:
    root: Path
    remote: RemoteRunDir | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if is_uri(self.root):
            object.__setattr__(self, "remote", RemoteRunDir(str(self.root)))
            object.__setattr__(self, "root", self.remote.local)
        else:
            object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    def __reduce__(self):
        """Travel as the location, so a Ray worker gets its own node's working copy."""
        return RunDir, (self.location,)

    @property
    def location(self) -> str:
        """What the user named: the URI of a remote run directory, else its local path."""
        return self.remote.uri if self.remote else str(self.root)

    def location_of(self, path: Path) -> str:
        """Where ``path`` (under ``root``) lives for the user: its URI, or the path itself."""
        return self.remote.uri_of(self._relative(path)) if self.remote else str(path)

    # syncing with a remote run directory (a local one is used in place)
    def pull(self, *paths: Path, mirror: bool = False) -> None:
        """Make ``paths`` (files or folders under ``root``; missing remote ones are skipped)
        current on this node. A local run directory must simply be visible here."""
        if self.remote is None:
            if not self.root.is_dir():
                raise RunDirError(
                    f"run directory {self.root} does not exist on node {socket.gethostname()}; on a multi-node "
                    "cluster every node must see it: use a shared file system mounted at the same path on "
                    "every node, or an s3://bucket/prefix or gs://bucket/prefix URI as --run-dir")
            return
        for path in paths:
            self.remote.pull(self._relative(path), mirror=mirror)

    def push(self, *paths: Path, mirror: bool = False) -> None:
        """Send ``paths`` (files or folders under ``root``) to the remote run directory, in order."""
        if self.remote is not None:
            for path in paths:
                self.remote.push(self._relative(path), mirror=mirror)

    def remove(self, *paths: Path) -> None:
        """Delete files or folders under ``root``, remotely too."""
        for path in paths:
            if self.remote is not None:
                self.remote.remove(self._relative(path))
            else:
                remove_local(path)

    def worker_inputs(self) -> tuple[Path, ...]:
        """What Ray workers read from the run directory: prepared tasks and graph, features, θ*."""
        return self.root / "prepared", self.root / "features", self.root / "model"

    def is_empty(self) -> bool:
        """No files yet (a run directory a command is about to create)."""
        if self.remote is not None:
            return not self.remote.remote_files()
        return not self.root.exists() or not any(self.root.iterdir())

    def _relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

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
    def ray_results(self) -> str:
        """Ray Train / Tune ``storage_path``: Ray reads and writes a remote one at its URI itself."""
        return self.location_of(self.root / "ray_results")
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
        self.push(self.timings, self.marker(stage))  # the marker last: a pushed marker means pushed outputs

    def load_json(self, path: Path, stage: str) -> dict:
        """Read a stage output, or explain which command produces it."""
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `raytag {stage} --run-dir {self.location}` first")
        with open(path) as handle:
            return json.load(handle)
