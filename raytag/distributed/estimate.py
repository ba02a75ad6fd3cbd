"""Estimate thousands of subsets on a pool of Ray actors, resumably.

The gradient data goes into the object store once (``ray.put``; numpy arrays come back as
zero-copy read-only views in every actor on a node), each actor fits its own copy of the
estimator from it, and subsets travel in batches. Every finished batch is written atomically
as ``batch_NNNNN.npy`` under the output folder, so a crash loses at most the batches in flight
(one per actor) and a rerun computes only the missing ones. Actors restart and retry their
task when they die (``max_restarts`` / ``max_task_retries``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch
from ray.util.metrics import Counter
from tqdm.auto import tqdm

from raytag.estimate.estimators import SubsetEstimator
from raytag.estimate.stats import GradientData
from raytag.estimate.subsets import check_subsets
from raytag.io import atomic_save_npy, atomic_write_json, read_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUBSETS_FITTED_METRIC = "raytag_subsets_fitted"


class EstimatorWorker:
    """Holds an estimator fitted on the shared gradient data and predicts batches of subsets."""

    def __init__(self, estimator: SubsetEstimator, data: GradientData, num_threads: int = 1,
                 members_only: bool = False):
        torch.set_num_threads(max(1, int(num_threads)))
        self.estimator = estimator.unfitted_copy().fit(data)
        self.members_only = members_only

    def predict_batch(self, batch_id: int, subsets: np.ndarray) -> tuple[int, np.ndarray]:
        return batch_id, self.estimator.predict(subsets, members_only=self.members_only)


RemoteEstimatorWorker = ray.remote(max_restarts=3, max_task_retries=3)(EstimatorWorker)


def batch_path(out_dir: Path, batch_id: int) -> Path:
    return Path(out_dir) / f"batch_{batch_id:05d}.npy"


class EstimationPool:
    """A pool of estimator actors sharing one copy of a fitted estimator's gradient data."""

    def __init__(self, estimator: SubsetEstimator, *, num_actors: int = 2, members_only: bool = False,
                 num_cpus_per_actor: int = 1, max_restarts: int = 3, max_task_retries: int = 3):
        if not hasattr(estimator, "data_"):
            raise ValueError(f"estimator {estimator!r} is not fitted: call fit(data) before "
                             "distributing it (the actors refit from the same data)")
        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialized: call raytag.distributed.session.ensure_ray first")
        self.estimator = estimator
        self._options = {"num_cpus": num_cpus_per_actor, "max_restarts": max_restarts,
                         "max_task_retries": max_task_retries}
        self._data_ref = ray.put(estimator.data_)
        self._num_threads = num_cpus_per_actor
        self.members_only = members_only
        self.actors = [self._new_actor() for _ in range(num_actors)]

    def _new_actor(self):
        return RemoteEstimatorWorker.options(**self._options).remote(
            self.estimator.unfitted_copy(), self._data_ref, self._num_threads, self.members_only)

    def manifest(self, subsets: np.ndarray, batch_size: int) -> dict:
        """What the batch files depend on; a mismatch on rerun discards them."""
        return {"estimator": type(self.estimator).__name__,
                "params": self.estimator.get_params(),
                "subsets_sha256": hashlib.sha256(np.ascontiguousarray(subsets).tobytes()).hexdigest(),
                "subsets_shape": list(subsets.shape), "batch_size": int(batch_size),
                "members_only": self.members_only,
                "data": self.estimator.data_.fingerprint()}

    def run(self, subsets, out_dir, *, batch_size: int | None = None, progress: bool = True,
            on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Predicted losses ``[m, n]`` for ``subsets``, computing only batches not yet on disk.

        ``batch_size`` defaults to the estimator's own (large batches keep its matrix products
        efficient). ``on_batch(batch_id)`` is called after each newly computed batch is written.
        """
        subsets = check_subsets(subsets, self.estimator.n_tasks_)
        batch_size = int(batch_size or self.estimator.default_batch_size())
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._check_manifest(out_dir, self.manifest(subsets, batch_size))
        starts = range(0, subsets.shape[0], batch_size)
        todo = [b for b in range(len(starts)) if not batch_path(out_dir, b).exists()]
        done_subsets = subsets.shape[0] - sum(min(batch_size, subsets.shape[0] - starts[b])
                                              for b in todo)
        counter = Counter(SUBSETS_FITTED_METRIC, description="Subsets whose task losses were estimated",
                          tag_keys=("estimator",))
        tags = {"estimator": type(self.estimator).__name__}
        replacements_left = 2 * len(self.actors)  # actors that die for good, beyond restarts
        with tqdm(total=subsets.shape[0], initial=done_subsets, unit="subset", desc="estimate",
                  disable=not progress) as bar:
            in_flight: dict = {}  # object ref -> (batch id, actor index)

            def submit(actor_index: int) -> None:
                if todo:
                    b = todo.pop(0)
                    batch = subsets[starts[b]:starts[b] + batch_size]
                    in_flight[self.actors[actor_index].predict_batch.remote(b, batch)] = (b, actor_index)

            for index in range(len(self.actors)):
                submit(index)
            while in_flight:
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                b, index = in_flight.pop(ref)
                try:
                    _, losses = ray.get(ref)
                except ray.exceptions.RayActorError as error:  # restarts exhausted
                    if replacements_left == 0:
                        raise RuntimeError(f"estimator actors keep dying (last on batch {b}); "
                                           f"finished batches are kept in {out_dir}") from error
                    replacements_left -= 1
                    log.warning("estimator actor %d died for good; starting a new one", index)
                    self.actors[index] = self._new_actor()
                    todo.insert(0, b)
                    submit(index)
                    continue
                atomic_save_npy(batch_path(out_dir, b), losses)
                counter.inc(len(losses), tags=tags)
                bar.update(len(losses))
                if on_batch is not None:
                    on_batch(b)
                submit(index)
        return np.concatenate([np.load(batch_path(out_dir, b)) for b in range(len(starts))])

    @staticmethod
    def _check_manifest(out_dir: Path, manifest: dict) -> None:
        path = out_dir / MANIFEST
        if path.exists() and read_json(path) == manifest:
            return
        stale = sorted(out_dir.glob("batch_*.npy"))
        if stale:
            log.warning("%s: %d batch files were computed for other inputs; recomputing",
                        out_dir, len(stale))
            for file in stale:
                file.unlink()
        atomic_write_json(path, manifest)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def run_estimation(estimator: SubsetEstimator, subsets, out_dir, *, num_actors: int = 2,
                   batch_size: int | None = None, progress: bool = True, members_only: bool = False,
                   num_cpus_per_actor: int = 1, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Predicted validation losses ``[m, n]`` of a fitted estimator on a pool of Ray actors,
    with per-batch results kept in ``out_dir`` for resumption. ``members_only``: only each
    subset's own tasks are evaluated (NaN elsewhere), all the affinity matrix reads."""
    pool = EstimationPool(estimator, num_actors=num_actors, members_only=members_only,
                          num_cpus_per_actor=num_cpus_per_actor)
    try:
        return pool.run(subsets, out_dir, batch_size=batch_size, progress=progress, on_batch=on_batch)
    finally:
        pool.shutdown()
