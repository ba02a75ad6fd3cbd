"""The stages of a raytag run, each reading and writing only the run directory.

A stage's config hash covers its own config sections and every earlier stage's, so a
changed setting reruns exactly the stages it affects; a finished stage with the same
hash is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import yaml

from raytag.config import RaytagConfig
from raytag.io import atomic_save_npy, atomic_save_npz, atomic_write_bytes, atomic_write_json, config_hash
from raytag.rundir import RunDir

log = logging.getLogger("raytag")


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]
    run: Callable[..., None]
    needs_ray: bool = False
    help: str = ""
    always: bool = False  # cheap stages that summarize others rerun every time
    scratch: tuple[str, ...] = ()  # resumable partial work (run-dir relative), dropped when the config changes
    upstream: str | None = None  # the stage whose outputs this one reads
    in_run: bool = True  # part of `raytag run` (validate and groups are heavy: run them on demand)


def _prepare(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    if config.data.format == "text":
        from raytag.lm.stages import prepare_text

        prepare_text(run, config)
        return
    from raytag.data.features import compute_node_features
    from raytag.data.graph import Graph
    from raytag.data.pairs import build_pairs
    from raytag.data.tasks import build_tasks

    edges, communities = _load_graph_and_labels(config)
    graph = Graph.from_edges(edges)
    tasks = config.tasks
    taskset, task_graph = build_tasks(
        graph, communities, num_tasks=tasks.num_tasks, regime=tasks.regime, seeds_per_task=tasks.seeds_per_task,
        val_fraction=tasks.val_fraction, negative_fractions=tasks.negative_fractions,
        negative_ratio=tasks.negative_ratio, max_positives_per_task=tasks.max_positives_per_task, seed=tasks.seed,
    )
    log.info("tasks: %d tasks on %d nodes (%s regime)", taskset.num_tasks, len(taskset.nodes), tasks.regime)
    adjacency = task_graph.adjacency.tocoo()
    features_key = config_hash({"features": config.features.model_dump(),
                                "graph": _graph_digest(task_graph.node_ids, adjacency)})
    if _cached_features_key(run) == features_key:
        log.info("features: inputs unchanged — reusing %s", run.features)
    else:
        features = compute_node_features(
            task_graph.adjacency, method=config.features.method, dim=config.features.dim,
            hops=config.features.hops, seed=config.features.seed, progress=log.info,
        )
        atomic_save_npy(run.features, features)
        atomic_write_json(run.features_meta, {**config.features.model_dump(), "shape": list(features.shape),
                                              "key": features_key})
    pairs = build_pairs(taskset, negatives_per_split=tasks.negatives_per_split, seed=tasks.seed,
                        balance_classes=tasks.balance_classes)
    atomic_save_npz(run.graph, row=adjacency.row.astype(np.int64), col=adjacency.col.astype(np.int64),
                    num_nodes=np.int64(task_graph.num_nodes))
    pairs.save(run.pairs)
    taskset.save(run.taskset)
    atomic_write_json(run.tasks_json, taskset.summary())


def _graph_digest(node_ids: np.ndarray, adjacency) -> str:
    """Content hash of the task graph: features are recomputed only when it (or their config) changes."""
    digest = hashlib.sha256()
    for array in (node_ids, adjacency.row, adjacency.col):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _cached_features_key(run: RunDir) -> str | None:
    if not (run.features.is_file() and run.features_meta.is_file()):
        return None
    return json.loads(run.features_meta.read_text()).get("key")


def _load_graph_and_labels(config: RaytagConfig):
    from raytag.data import loaders

    data = config.data
    if data.format == "dblp":
        edges_path, communities_path = loaders.dblp_paths()
        return loaders.read_edge_list(edges_path), loaders.read_communities(communities_path)
    if data.format == "snap":
        return (loaders.read_edge_list(data.edges, field="data.edges"),
                loaders.read_communities(data.communities, field="data.communities"))
    if data.format == "adjlist":
        return (loaders.read_adjacency_list(data.adjacency, field="data.adjacency"),
                loaders.read_node_labels(data.labels, field="data.labels"))
    from raytag.data.synthetic import generate_planted_graph

    synthetic = data.synthetic
    return generate_planted_graph(synthetic.num_nodes, synthetic.num_communities, synthetic.avg_degree,
                                  seed=synthetic.seed)


def load_graph(run: RunDir):
    """The task graph saved by ``prepare`` as a symmetric CSR matrix."""
    import scipy.sparse as sp

    saved = np.load(run.graph)
    n = int(saved["num_nodes"])
    return sp.csr_matrix((np.ones(len(saved["row"]), dtype=np.float32), (saved["row"], saved["col"])), shape=(n, n))


def _train(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    if config.data.format == "text":
        from raytag.distributed.lm_train import train_lm_on_ray

        train_lm_on_ray(run, config)
        return
    from raytag.data.tasks import TaskSet
    from raytag.distributed.train import train_meta_model
    from raytag.evaluation import per_task_metrics
    from raytag.models.ppr import personalized_pagerank_scores

    summary = train_meta_model(run, config)
    taskset = TaskSet.load(run.taskset)
    seeds = [np.flatnonzero((taskset.split[:, t] == 1) & (taskset.labels[:, t] == 1)) for t in range(taskset.num_tasks)]
    ppr = per_task_metrics(personalized_pagerank_scores(load_graph(run), seeds), taskset.labels, taskset.split)
    summary["ppr_baseline"] = {"mean_test_ap": float(np.mean(ppr["test_ap"])),
                               "mean_test_f1": float(np.mean(ppr["test_f1"])),
                               "per_task_test_ap": dict(zip(taskset.names, np.asarray(ppr["test_ap"]).tolist()))}
    summary["test"]["mean_base_rate"] = float(np.mean(ppr["base_rate"]))
    atomic_write_json(run.train_metrics, summary)
    log.info("θ*: test AP %.4f, F1 %.4f (best epoch %d); base rate %.4f; PPR-from-seeds AP %.4f",
             summary["test"]["mean_test_ap"], summary["test"]["mean_test_f1"], summary["best_epoch"],
             summary["test"]["mean_base_rate"], summary["ppr_baseline"]["mean_test_ap"])


def _project(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    from raytag.distributed.project import project_gradients  # graph and text runs alike

    project_gradients(run, config, stage_hash(config, "project"), force=force)


def load_gradient_data(run: RunDir):
    """The consolidated gradient store as the estimators' input."""
    from raytag.data.tasks import TaskSet
    from raytag.estimate.stats import GradientData
    from raytag.grads import GradientStore

    arrays = GradientStore(run.grad_store).read()
    num_tasks = TaskSet.load(run.taskset).num_tasks
    return GradientData(grads=arrays["grads"], base_logits=arrays["base_logits"], task=arrays["task"],
                        split=arrays["split"], label=arrays["label"], weight=arrays["weight"], n_tasks=num_tasks)


def make_estimator(config: RaytagConfig, steps_multiplier: float = 1.0):
    """The configured estimator; the linearized one runs the real fine-tune's lr and steps."""
    from raytag.estimate.estimators import LinearizedFineTune, NewtonLogistic, OneStepNewton, SeedLogistic

    estimate = config.estimate
    if estimate.estimator == "linearized":
        return LinearizedFineTune(lr=config.finetune.lr, steps=int(round(config.finetune.steps * steps_multiplier)),
                                  matmul_dtype=estimate.matmul_dtype)
    if estimate.estimator == "onestep":
        return OneStepNewton(l2=estimate.l2, matmul_dtype=estimate.matmul_dtype)
    if estimate.estimator == "newton":
        return NewtonLogistic(l2=estimate.l2)
    return SeedLogistic(C=estimate.seed_c)


def anchor_record(run: RunDir, config: RaytagConfig, estimator, steps: int | None = None) -> dict | None:
    """The anchor calibration of a fitted ``estimator`` (offsets, anchors, FLOPs), or ``None``
    when anchors are off; ``steps`` other than the configured ones fine-tunes the anchors for
    that many steps."""
    from raytag.data.tasks import TaskSet
    from raytag.distributed.anchors import anchor_calibration

    if not config.estimate.anchors:
        return None
    return anchor_calibration(run, config, estimator, TaskSet.load(run.taskset).names,
                              steps=config.finetune.steps if steps is None else steps)


def _estimate(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    from raytag.distributed.estimate import MANIFEST, batch_path, run_estimation
    from raytag.estimate.subsets import sample_subsets

    data = load_gradient_data(run)
    estimator = make_estimator(config).fit(data)
    estimate = config.estimate
    subsets = sample_subsets(data.n_tasks, m=estimate.num_subsets, size=min(estimate.subset_size, data.n_tasks),
                             seed=estimate.seed)
    batches = run.estimate_dir / "batches"
    losses = run_estimation(estimator, subsets, batches, num_actors=estimate.num_actors, batch_size=estimate.batch_size,
                            members_only=True, on_batch=lambda b: run.push(batches / MANIFEST, batch_path(batches, b)))
    anchors = anchor_record(run, config, estimator)
    if anchors is not None:
        losses = losses + np.asarray(anchors["offsets"])[None, :]
        atomic_write_json(run.estimate_dir / "anchors.json", anchors)
    atomic_save_npy(run.estimate_dir / "subsets.npy", subsets)
    atomic_save_npy(run.estimate_dir / "losses.npy", losses)
    atomic_save_npy(run.estimate_dir / "base_losses.npy", estimator.base_val_loss_)
    atomic_write_json(run.estimate_dir / "meta.json", {"estimator": repr(estimator), "d": data.d,
                                                      "num_subsets": int(subsets.shape[0]),
                                                      "subset_size": int(subsets.shape[1])})


def _affinity(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    from raytag.data.tasks import TaskSet
    from raytag.estimate.affinity import affinity_matrix, higher_order_surrogate

    subsets = np.load(run.estimate_dir / "subsets.npy")
    losses = np.load(run.estimate_dir / "losses.npy")
    names = TaskSet.load(run.taskset).names
    if config.affinity.method == "mean":
        matrix = affinity_matrix(subsets, losses, len(names))
    else:
        matrix = higher_order_surrogate(subsets, losses, len(names), l2=config.estimate.l2)
    atomic_save_npy(run.affinity, matrix)
    atomic_write_json(run.affinity_json, {"tasks": names, "settings": {"method": config.affinity.method,
                                                                      "num_subsets": int(subsets.shape[0]),
                                                                      "subset_size": int(subsets.shape[1])}})


def _cluster(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    from raytag.cluster import cluster_tasks
    from raytag.data.tasks import TaskSet

    names = TaskSet.load(run.taskset).names
    grouping = cluster_tasks(np.load(run.affinity), k=config.cluster.k, method=config.cluster.method,
                             seed=config.cluster.seed, overlap=config.cluster.overlap)
    result = grouping.to_json(names)
    result["recommendation"] = _grouping_recommendation(run, config, grouping.groups, names)
    atomic_write_json(run.groups_json, result)
    log.info("cluster: %d groups (%s, objective %.4f); %s", len(grouping.groups), grouping.method,
             grouping.objective, result["recommendation"]["reason"])


def _grouping_recommendation(run: RunDir, config: RaytagConfig, groups: list[list[int]], names: list[str],
                             random_draws: int = 5) -> dict:
    """Does splitting help? The estimator predicts each task's validation loss when fine-tuned
    with its group, with all tasks, and with random groups of the same sizes; the verdict is
    :func:`raytag.cluster.recommend.recommend_split`'s."""
    from raytag.cluster import random_grouping
    from raytag.cluster.recommend import recommend_split

    estimator = make_estimator(config).fit(load_gradient_data(run))
    n = len(names)
    sizes = [len(group) for group in groups]
    groupings = [groups] + [random_grouping(sizes, n, seed=config.cluster.seed + draw) for draw in range(random_draws)]
    # One batched prediction: every group of every grouping, padded with -1, plus all tasks together.
    rows = [sorted(group) for grouping in groupings for group in grouping] + [list(range(n))]
    padded = np.full((len(rows), n), -1, dtype=np.int64)
    for index, row in enumerate(rows):
        padded[index, :len(row)] = row
    predicted = estimator.predict(padded)
    losses = np.full((len(groupings), n), np.nan)
    index = 0
    for which, grouping in enumerate(groupings):
        for group in grouping:
            losses[which, group] = predicted[index, group]
            index += 1
    ours, random, all_in_one = losses[0], losses[1:].mean(axis=0), predicted[-1]
    return recommend_split(all_in_one - ours, random - ours, names)


def _validate(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    from raytag.distributed.validate import run_validation

    result = run_validation(run, config)
    log.info("validate: within-task Spearman %s, Δ-loss relative error %s (task-mean baseline %s)",
             result.get("within_task_spearman"), result.get("delta_relative_error"),
             result.get("baselines", {}).get("task_mean", {}).get("delta_relative_error"))


def _groups(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    from raytag.distributed.groups import evaluate_groupings

    result = evaluate_groupings(run, config)
    for name, strategy in result["strategies"].items():
        log.info("groups: %-22s test AP %.4f  F1 %.4f", name, strategy["mean_test_ap"], strategy["mean_test_f1"])


def _report(run: RunDir, config: RaytagConfig, force: bool = False) -> None:
    from raytag.report import build_report

    path = build_report(run.root)
    log.info("report: %s", path)


STAGES: list[Stage] = [
    Stage("prepare", ("data", "tasks", "features", "lm"), _prepare,
          help="Load the graph and labels, build tasks and splits, compute node features."),
    Stage("train", ("model", "training"), _train, upstream="prepare", needs_ray=True,
          scratch=("model/train_state.pt", "ray_results/train"),
          help="Train the multitask meta-initialization θ* on Ray Train."),
    Stage("project", ("project",), _project, upstream="train", needs_ray=True,
          help="Project per-sample gradients of every (sample, task) pair into the store (Ray Data)."),
    Stage("estimate", ("finetune", "estimate"), _estimate, upstream="project", needs_ray=True,
          scratch=("estimate/batches",),
          help="Estimate every task's loss after fine-tuning on thousands of task subsets (Ray actors); "
               "a few real anchor fine-tunes (Ray Tune) fix each task's loss level (estimate.anchors)."),
    Stage("affinity", ("affinity",), _affinity, upstream="estimate",
          help="Build the task-affinity matrix from the estimates."),
    Stage("cluster", ("cluster",), _cluster, upstream="affinity",
          help="Group tasks (SDP / scalable), and say whether splitting is predicted to help at all."),
    Stage("validate", ("validate",), _validate, upstream="estimate", needs_ray=True, in_run=False,
          scratch=("validate",),
          help="Really fine-tune θ* on sampled subsets (Ray Tune) and score the estimates against them."),
    Stage("groups", ("groups",), _groups, upstream="cluster", needs_ray=True, in_run=False,
          scratch=("groups_trials", "ray_results/groups"),
          help="Train one model per group (Ray Tune; from θ*, or from scratch with groups.init=scratch) against "
               "all-in-one, single-task and random groups; also in the estimator's own regime (deterministic GD "
               "of finetune.* from θ*)."),
    Stage("report", (), _report, always=True, help="Write report/report.html (self-contained) with the figures."),
]
STAGE_NAMES = [stage.name for stage in STAGES]
RUN_STAGES = [stage.name for stage in STAGES if stage.in_run]


OPERATIONAL_FIELDS = {"project": {"num_actors"}, "estimate": {"num_actors"}}
"""Settings that change how much runs in parallel, not what is computed: left out of stage hashes,
so resuming with more actors keeps the finished shards and batches."""


def stage_hash(config: RaytagConfig, name: str) -> str:
    """Hash of this stage's config sections and its upstream stage's hash (so, transitively, of
    every setting its inputs depend on)."""
    stage = next(s for s in STAGES if s.name == name)
    upstream = stage_hash(config, stage.upstream) if stage.upstream else None
    sections = config.section_dict(*stage.sections)
    if config.data.format != "text":
        sections.pop("lm", None)  # language-model settings cannot change a graph run
    for section, fields in OPERATIONAL_FIELDS.items():
        for field in fields.intersection(sections.get(section, {})):
            del sections[section][field]
    return config_hash({"sections": sections, "upstream": upstream})


def save_config(run: RunDir, config: RaytagConfig) -> None:
    atomic_write_bytes(run.config_yaml, yaml.safe_dump(config.to_dict(), sort_keys=False).encode())
    run.push(run.config_yaml)


def run_stage(run: RunDir, config: RaytagConfig, name: str, *, force: bool = False) -> bool:
    """Run one stage unless it is done with the same config; returns True when it ran."""
    stage = next(s for s in STAGES if s.name == name)
    digest = stage_hash(config, name)
    run.root.mkdir(parents=True, exist_ok=True)
    run.pull(run.root, mirror=True)  # a remote run directory: this node's copy becomes exactly the remote one
    if not (force or stage.always) and run.is_done(name, digest):
        log.info("%s: done already (config unchanged) — skipped", name)
        return False
    run.remove(run.marker(name))  # outputs are about to change: not done until this run ends
    _drop_stale_scratch(run, stage, digest, force)
    started = time.perf_counter()
    log.info("%s: running", name)
    if stage.needs_ray:
        from raytag.distributed.metrics import stage_progress

        stage_progress(name, 0.0)
    stage.run(run, config, force=force)
    if stage.needs_ray:
        stage_progress(name, 1.0)
    run.push(run.root, mirror=True)  # a remote run directory: what the stage wrote and deleted, before its marker
    seconds = time.perf_counter() - started
    run.mark_done(name, digest, seconds)
    log.info("%s: finished in %.1f s", name, seconds)
    return True


def _drop_stale_scratch(run: RunDir, stage: Stage, digest: str, force: bool) -> None:
    """Partial work of a stage started under another config (or with --force) must not be resumed."""
    started = run.root / "stages" / f"{stage.name}.started.json"
    previous = json.loads(started.read_text()).get("config_hash") if started.is_file() else None
    if force or (previous is not None and previous != digest):
        run.remove(*(run.root / relative for relative in stage.scratch))
    atomic_write_json(started, {"config_hash": digest})
    run.push(started)

