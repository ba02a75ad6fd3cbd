"""Which auxiliary tasks to train a target task with (GradEx), and a real check of the choice.

The run's estimator predicts the target's validation loss after fine-tuning on the target
plus many random source subsets; sources are ranked by their mean marginal effect, and chosen
by greedy forward selection against the estimator. The baselines GradEx compares against rank
sources by cosine similarity to the target: of the mean projected training-loss gradients, and
of the mean trunk embeddings of the training positives. ``verify`` really fine-tunes the
target with each choice (the same Adam procedure as ``groups``, from θ* or from scratch as
``groups.init`` says) and scores the target on test.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from scipy.special import expit
import torch

from raytag import pipeline
from raytag.config import RaytagConfig
from raytag.data.pairs import Pairs
from raytag.data.tasks import TRAIN, TaskSet
from raytag.distributed.groups import finetune_jobs, run_finetunes
from raytag.distributed.session import ensure_ray, use_gpu
from raytag.io import atomic_write_json
from raytag.lm.finetune import TextFinetune
from raytag.models import load_model
from raytag.select.sources import (greedy_forward_selection, random_sources, rank_by_gradient_cosine,
                                   rank_by_marginal_effect, rank_by_representation_cosine,
                                   sample_source_subsets)
from raytag.select.verification import verification_metrics
from raytag.rundir import RunDir

RANDOM_DRAWS = 3
"""Random source sets fine-tuned per seed under ``verify`` (their mean is the baseline)."""


def select_sources(run: RunDir, config: RaytagConfig, target: str, budget: int | None = None,
                   verify: bool = False) -> dict:
    """Choose ``budget`` sources for ``target`` (a task name); writes ``select_<target>.json``."""
    started = time.perf_counter()
    taskset = TaskSet.load(run.taskset)
    names, n = taskset.names, taskset.num_tasks
    if target not in names:
        raise ValueError(f"target: {target!r} is not a task of this run; valid names include "
                         f"{names[:5]} ({n} tasks, listed in {run.tasks_json})")
    budget = config.select.budget if budget is None else int(budget)
    if not 1 <= budget <= n - 1:
        raise ValueError(f"budget: {budget} sources requested; must be in [1, {n - 1}] (tasks other than the target)")
    t = names.index(target)

    data = pipeline.load_gradient_data(run)
    estimator = pipeline.make_estimator(config).fit(data)

    def target_loss(sources: list[int]) -> float:
        return float(estimator.predict(np.array([[t, *sources]]), members_only=True)[0, t])

    subsets = sample_source_subsets(n, t, m=config.select.num_subsets, size=budget, seed=0)
    with_target = np.concatenate([np.full((subsets.shape[0], 1), t), subsets], axis=1)
    losses = estimator.predict(with_target, members_only=True)[:, t]
    marginal = rank_by_marginal_effect(subsets, losses, n, t)
    greedy = greedy_forward_selection(target_loss, [j for j in range(n) if j != t], budget, stop_when_no_gain=False)
    chosen = greedy["selected"]

    gradient = rank_by_gradient_cosine(t, _mean_loss_gradients(data))
    pairs = Pairs.load(run.pairs)
    embeddings = (TextFinetune.cached(str(run.root)).task_embeddings() if config.data.format == "text"
                  else _mean_positive_embeddings(run, pairs, n))
    representation = rank_by_representation_cosine(t, embeddings)
    result = {
        "target": target,
        "budget": budget,
        "chosen": [names[j] for j in chosen],
        "estimated_gains": {names[j]: float(g) for j, g in zip(chosen, greedy["gains"])},
        "estimated_loss": {"target_alone": greedy["base_loss"], "with_chosen": greedy["losses"][-1]},
        "ranking_marginal": [names[j] for j in marginal["ranking"]],
        "marginal_effect": {names[j]: float(marginal["effect"][j]) for j in marginal["ranking"]},
        "ranking_greedy": [names[j] for j in chosen],
        "baselines": {"gradient_cosine": [names[j] for j in gradient["ranking"]],
                      "representation_cosine": [names[j] for j in representation["ranking"]]},
        "method": {
            "chosen_by": "greedy forward selection on the estimated target validation loss (gains may be negative: "
                         "the budget is always filled)",
            "subsets": f"{subsets.shape[0]} random source subsets of size {budget} (+ the target)",
            "estimator": repr(estimator),
            "gradient_cosine": "cosine of the tasks' mean projected training-loss gradients at θ*",
            "representation_cosine": "cosine of the mean trunk embedding of each task's training positives "
                                     "(negatives are a uniform sample of one shared node pool, so they would "
                                     "add the same vector to every task)",
        },
    }
    if verify:
        alternatives = {
            "chosen": [chosen],
            "target_alone": [[]],
            "random_sources": [random_sources(n, t, budget, seed=draw) for draw in range(RANDOM_DRAWS)],
            "marginal_top_k": [marginal["ranking"][:budget]],
            "gradient_cosine": [gradient["ranking"][:budget]],
            "representation_cosine": [representation["ranking"][:budget]],
        }
        result["verify"] = _verify(run, config, t, alternatives, names)
        result["verify_settings"] = {"init": config.groups.init, "epochs": config.groups.epochs,
                                     "lr": config.groups.lr, "seeds": config.groups.seeds,
                                     "optimizer": "adam", "epoch_choice": "the target's best validation epoch"}
        result["verify_estimator_regime"] = _verify(run, config, t, alternatives, names, estimator_regime=True)
    result["seconds"] = time.perf_counter() - started
    atomic_write_json(run.select_json(target), result)
    return result


def verify_summary(result: dict) -> str | None:
    """One line for the terminal: the target's test metric under each training set of
    ``--verify`` (Adam), or None when the selection was not verified."""
    verify = result.get("verify")
    if not verify:
        return None
    key, label, _ = verification_metrics([verify])[0]
    start = "from scratch" if (result.get("verify_settings") or {}).get("init") == "scratch" else "from θ*"
    scores = ", ".join(f"{name.replace('_', ' ')} {entry[key]:.3f}" for name, entry in verify.items()
                       if entry.get(key) is not None)
    return f"verified ({label}, Adam {start}): {scores}"


def _verify(run: RunDir, config: RaytagConfig, t: int, alternatives: dict[str, list[list[int]]],
            names: list[str], estimator_regime: bool = False) -> dict:
    """Fine-tune target + each source set (from ``groups.init``) and score the target on test: one Tune trial
    per seed runs every alternative (each is short; trial start-up would dominate).
    ``estimator_regime``: the deterministic GD fine-tune the estimates model (one trial; the
    scores add the target's validation loss)."""
    ensure_ray(config.ray)
    gpu = use_gpu(config.training.use_gpu)
    labelled = [(strategy, sources) for strategy, draws in alternatives.items() for sources in draws]
    seeds = [0] if estimator_regime else range(config.groups.seeds)
    jobs = [finetune_jobs(run, config, f"verify-task{t}", seed, [[t, *sources] for _, sources in labelled],
                          eval_tasks=[t], gpu=gpu, estimator_regime=estimator_regime) for seed in seeds]
    trials = run_finetunes(run, config, jobs, "select")
    verify = {}
    for strategy, draws in alternatives.items():
        positions = [i for i, (name, _) in enumerate(labelled) if name == strategy]
        runs = [trial["groups"][i][str(t)] for trial in trials for i in positions]
        # the test metrics of raytag.select.verification (graph: AP, F1; text: accuracy, loss)
        scores = {key: np.array([np.nan if r[key] is None else r[key] for r in runs], dtype=np.float64)
                  for key in runs[0] if key.startswith("test_") or key == "val_loss"}
        verify[strategy] = {**{key: float(np.mean(v)) for key, v in scores.items()},
                            **{f"std_{key}": float(np.std(v, ddof=1)) if v.size > 1 else None
                               for key, v in scores.items()},
                            "runs": len(runs),
                            "sources": [[names[j] for j in sources] for sources in draws]}
    return verify


def _task_means(task: np.ndarray, coefficient: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per task, Σ coefficient·values / Σ coefficient-weights — one sparse [n, P] @ [P, d] product."""
    matrix = sp.csr_matrix((coefficient, (task, np.arange(task.size))), shape=(n, task.size))
    return np.asarray(matrix @ values, dtype=np.float64)


def _mean_loss_gradients(data) -> np.ndarray:
    """[n, d]: each task's projected training-loss gradient at θ*, Σ w (σ(f) − y) ĝ / Σ w over its
    training pairs — the direction its first fine-tune step takes."""
    train = np.flatnonzero(data.split == TRAIN)
    weight = np.asarray(data.weight[train], dtype=np.float64)
    residual = expit(np.asarray(data.base_logits[train], dtype=np.float64)) - data.label[train]  # no overflow at large |logit|
    task = np.asarray(data.task[train], dtype=np.int64)
    total = np.bincount(task, weights=weight, minlength=data.n_tasks)
    coefficient = weight * residual / np.maximum(total[task], 1e-12)
    return _task_means(task, coefficient, np.asarray(data.grads[train], dtype=np.float32), data.n_tasks)


@torch.no_grad()
def _mean_positive_embeddings(run: RunDir, pairs: Pairs, n: int) -> np.ndarray:
    """[n, h]: mean θ* trunk embedding of each task's training positives."""
    model = load_model(run.checkpoint).eval()
    keep = np.flatnonzero((pairs.split == TRAIN) & (pairs.label == 1))
    rows, position = np.unique(pairs.node[keep], return_inverse=True)
    features = np.load(run.features, mmap_mode="r")
    embedded = model.embed(torch.from_numpy(np.asarray(features[rows], dtype=np.float32))).double().numpy()
    task = pairs.task[keep].astype(np.int64)
    counts = np.bincount(task, minlength=n).astype(np.float64)
    return _task_means(task, 1.0 / np.maximum(counts[task], 1.0), embedded[position], n)
