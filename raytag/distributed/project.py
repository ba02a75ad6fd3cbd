"""The projection stage on Ray Data: shards of (sample, task) pairs -> projected gradients.

The dataset's rows are shard descriptors (pair ranges). ``map_batches`` runs
:class:`ShardProjector` in an actor pool (model, features and projector loaded once per
actor, a GPU each when the cluster has them); every call writes one shard atomically. A
killed actor's shard is retried by Ray Data and rewritten identically, and a rerun skips
complete shards, so the store always equals an uninterrupted run's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch
from ray.data import ActorPoolStrategy
from ray.util.metrics import Counter
from tqdm import tqdm

from raytag.config import RaytagConfig
from raytag.data.pairs import Pairs
from raytag.data.tasks import TRAIN
from raytag.distributed.metrics import stage_progress
from raytag.distributed.session import use_gpu
from raytag.grads import (GradientStore, ProjectedGradients, Projector, StoreMismatchError, make_pair_projector,
                          projector_from_spec, save_projector)
from raytag.grads.factory import build_projector, fit_sample
from raytag.io import file_hash, read_json
from raytag.models import load_model
from raytag.rundir import RunDir

log = logging.getLogger("raytag")
PROJECTOR_DIR = "projector"


class ShardProjector:
    """Callable class for ``map_batches``: one actor = one model copy + one projector."""

    def __init__(self, run_dir: str, projector_spec: dict, gpu: bool):
        self.run = RunDir(run_dir)
        self.run.pull(*self.run.worker_inputs(), self.run.grad_store / "manifest.json",
                      self.run.grad_store / PROJECTOR_DIR)
        self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
        self.pairs = Pairs.load(self.run.pairs)
        self.load_model(projector_from_spec(projector_spec, self.run.grad_store / PROJECTOR_DIR))
        self.store = GradientStore(self.run.grad_store)
        self.counter = Counter("raytag_samples_projected", description="(sample, task) pairs projected")

    def load_model(self, projector) -> None:
        """θ* and what its gradients need (a text run's actor loads its LoRA model and examples instead)."""
        self.project = make_pair_projector(load_model(self.run.checkpoint, map_location=self.device), projector)
        self.features = np.load(self.run.features, mmap_mode="r")

    def project_rows(self, rows: np.ndarray) -> ProjectedGradients:
        node, task = self.pairs.node[rows], self.pairs.task[rows]
        x = torch.from_numpy(np.asarray(self.features[node], dtype=np.float32)).to(self.device)
        return self.project(x, torch.from_numpy(task.astype(np.int64)).to(self.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for shard_id, start, stop in zip(batch["shard"], batch["start"], batch["stop"]):
            rows = np.arange(start, stop)
            out = self.project_rows(rows)
            self.store.write_shard(int(shard_id), {
                "grads": out.grads.float().cpu().numpy(), "base_logits": out.logits.float().cpu().numpy(),
                "pair_index": rows, "node": self.pairs.node[rows], "task": self.pairs.task[rows],
                "split": self.pairs.split[rows],
                "label": self.pairs.label[rows], "weight": self.pairs.weight[rows]})
            self.run.push(*self.store.shard_paths(int(shard_id)))  # a remote run: each shard as soon as it exists
            self.counter.inc(len(rows))
        return {"shard": batch["shard"], "rows": batch["stop"] - batch["start"]}


@dataclass(frozen=True)
class ProjectionSource:
    """What differs between a graph run's projection and a text run's
    (``raytag.distributed.lm_project.text_projection_source``)."""

    checkpoint: Path  # θ*'s file: its hash keys the store
    fit_projector: Callable[[RunDir, RaytagConfig, Pairs], Projector]
    actor: type  # the map_batches callable class
    actor_kwargs: dict


def _fit_graph_projector(run: RunDir, config: RaytagConfig, pairs: Pairs) -> Projector:
    model = load_model(run.checkpoint)
    features = np.load(run.features, mmap_mode="r")
    sample = fit_sample(pairs.task, pairs.split, config.project.fit_samples, config.project.seed)
    x = torch.from_numpy(np.asarray(features[pairs.node[sample]], dtype=np.float32))
    train = np.flatnonzero(pairs.split == TRAIN)

    def training_batches():
        for start in range(0, train.size, config.project.batch_size):
            rows = train[start:start + config.project.batch_size]
            yield (torch.from_numpy(np.asarray(features[pairs.node[rows]], dtype=np.float32)),
                   torch.from_numpy(pairs.task[rows].astype(np.int64)),
                   torch.from_numpy(pairs.label[rows]), torch.from_numpy(pairs.weight[rows]))

    return build_projector(config.project.projector, model, x, torch.from_numpy(pairs.task[sample].astype(np.int64)),
                           torch.from_numpy(pairs.weight[sample]), config.project.d, config.project.seed,
                           training_batches=training_batches, task_rank=config.project.task_rank)


def _projection_source(run: RunDir, config: RaytagConfig) -> ProjectionSource:
    if config.data.format == "text":
        from raytag.distributed.lm_project import text_projection_source

        return text_projection_source(run, config)
    return ProjectionSource(run.checkpoint, _fit_graph_projector, ShardProjector, {})


def _projector_spec(run: RunDir, config: RaytagConfig, pairs: Pairs, force: bool,
                    source: ProjectionSource) -> dict:
    """Reuse the projector saved with an existing store (a resume), else fit and save one."""
    store_manifest = run.grad_store / "manifest.json"
    if store_manifest.is_file() and not force:
        saved = read_json(store_manifest)
        if saved.get("projector", {}).get("config") == _projector_config(config):
            return saved["projector"]
    started = time.perf_counter()
    projector = source.fit_projector(run, config, pairs)
    spec = save_projector(projector, run.grad_store / PROJECTOR_DIR)
    spec["config"] = _projector_config(config)
    spec["fit_seconds"] = round(time.perf_counter() - started, 3)
    return spec


def _projector_config(config: RaytagConfig) -> dict:
    return config.project.model_dump(include={"projector", "d", "seed", "fit_samples", "task_rank"})


def project_gradients(run: RunDir, config: RaytagConfig, config_hash: str, *, force: bool = False,
                      shard_size: int | None = None) -> GradientStore:
    """Fill the run's gradient store; returns it consolidated (memory-mappable)."""
    pairs = Pairs.load(run.pairs)
    source = _projection_source(run, config)
    spec = _projector_spec(run, config, pairs, force, source)
    identity = {"config_hash": config_hash, "checkpoint_hash": file_hash(source.checkpoint), "projector": spec,
                "dtype": config.project.dtype, "d": config.project.d}
    try:
        store = GradientStore.open_or_create(run.grad_store, identity, force=force)
    except StoreMismatchError as stale:  # θ* or a setting changed: its gradients no longer apply
        log.warning("project: recomputing the stale gradient store — %s", stale.differences)
        store = GradientStore.open_or_create(run.grad_store, identity, force=True)
    size = shard_size or config.project.batch_size
    starts = np.arange(0, len(pairs), size)
    done = set(store.complete_shards())
    todo = [i for i in range(len(starts)) if i not in done]
    log.info("project: %d pairs in %d shards, %d to compute (projector %s, d=%d)",
             len(pairs), len(starts), len(todo), config.project.projector, config.project.d)
    if todo:
        ray.data.DataContext.get_current().enable_progress_bars = False  # our tqdm bar counts pairs instead
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        gpu = use_gpu(config.training.use_gpu)
        items = [{"shard": i, "start": int(starts[i]), "stop": int(min(starts[i] + size, len(pairs)))} for i in todo]
        run.push(run.grad_store, mirror=True)  # actors on other nodes read the manifest and projector
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            source.actor, fn_constructor_kwargs={"run_dir": run.location, "projector_spec": spec, "gpu": gpu,
                                                 **source.actor_kwargs},
            batch_size=1, compute=ActorPoolStrategy(size=config.project.num_actors),
            num_gpus=1 if gpu else 0, num_cpus=1)
        done_before = len(pairs) - sum(it["stop"] - it["start"] for it in items)
        with tqdm(total=len(pairs), initial=done_before, unit="pair", desc="project") as bar:
            for row in dataset.iter_rows():
                bar.update(int(row["rows"]))
                stage_progress("project", bar.n / len(pairs))
        run.pull(run.grad_store / "shards")  # shards that actors on other nodes pushed
    store.sync_manifest()
    store.consolidate()
    return store
