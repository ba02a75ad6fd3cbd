"""Does the grouping pay off? One model per group fine-tuned from θ*, against the baselines.

Every learned strategy runs the same procedure, :func:`finetune_group`: seeded minibatch
Adam from θ* on the group's training pairs (the class-balanced rows the estimator saw), and
each task scored at its own best epoch by validation AP (the fairest choice for every
strategy alike). Strategies: raytag's groups, one all-task model, each task alone, random
groups of the same sizes; plus two figures computed at train time — θ* with each task's best
epoch, and personalized PageRank from the seeds (non-learned). One Ray Tune trial per
(strategy, seed, group), cached on disk so a rerun only trains what is missing.

The estimator's own regime is checked beside it (``estimator_regime`` in ``groups_eval.json``):
raytag's groups, one all-task model and random groups of the same sizes, each fine-tuned by
the deterministic full-batch gradient descent the estimates model (``finetune.lr``,
``finetune.steps``, :func:`finetune_group_gd`), scored by validation loss — the quantity the
affinity matrix is built from — and by test AP / F1.
"""

from __future__ import annotations

import copy
import functools
import time
import warnings

import numpy as np
import torch

from raytag.cluster import random_grouping
from raytag.config import RaytagConfig
from raytag.data.pairs import Pairs
from raytag.data.tasks import TEST, TRAIN, VAL, TaskSet
from raytag.distributed.metrics import tasks_trained
from raytag.distributed.session import ensure_ray, use_gpu
from raytag.distributed.tune import run_trials
from raytag.evaluation import per_task_metrics
from raytag.io import atomic_write_json, config_hash, file_hash
from raytag.lm.finetune import TextFinetune, is_text_run
from raytag.lm.stages import lm_adapter_file
from raytag.models import SignMLP, load_model
from raytag.models.finetune import PairMatrix, finetune_subset, per_task_losses, validation_matrix
from raytag.models.training import predict, train_epoch
from raytag.rundir import RunDir

FINETUNE_BATCH_SIZE = 256
"""Minibatch rows of every group / source fine-tune: a single task has ~1k training pairs, so
the multitask batch size (4096) would give one step per epoch."""
SINGLE_TASKS_PER_TRIAL = 10
"""Single-task fine-tunes are short; several per Tune trial amortize the trial start-up."""
GPU_SHARE = 0.25
"""GPU fraction per trial: a SIGN-MLP fine-tune uses a sliver of a GPU, so four share one."""
LEARNED = ("raytag_groups", "all_in_one", "single_task", "random_groups")


@functools.lru_cache(maxsize=1)
def load_finetune_inputs(run_root: str) -> tuple[SignMLP, np.ndarray, TaskSet, Pairs]:
    """θ*, node features (memory-mapped), TaskSet and Pairs; cached per process so a Tune
    worker running several trials reads them once."""
    run = RunDir(run_root)
    run.pull(*run.worker_inputs())
    return (load_model(run.checkpoint), np.load(run.features, mmap_mode="r"), TaskSet.load(run.taskset),
            Pairs.load(run.pairs))


def finetune_group(theta: SignMLP, features: np.ndarray, taskset: TaskSet, pairs: Pairs, group, *,
                   epochs: int, lr: float, seed: int, batch_size: int = FINETUNE_BATCH_SIZE,
                   eval_tasks=None, from_scratch: bool = False,
                   device: str | torch.device = "cpu") -> dict[int, dict]:
    """Fine-tune a copy of θ* (``from_scratch``: a model of θ*'s shape with fresh weights drawn
    from ``seed``) on ``group``'s training pairs and score each of ``eval_tasks`` (default: the
    group) at its own best epoch.

    Every epoch scores the full validation split (AP per task); the model of each epoch that is
    some task's best so far is kept, and only those epochs are scored on the test split — so a
    group costs one validation pass per epoch plus one test pass per distinct best epoch.
    Returns ``{task: {"best_epoch", "val_ap", "test_ap", "test_f1"}}`` (test F1 at the
    threshold chosen on validation; NaN where a split has no positives).
    """
    group = np.unique(np.asarray(group, dtype=np.int64))
    eval_tasks = group if eval_tasks is None else np.unique(np.asarray(eval_tasks, dtype=np.int64))
    torch.manual_seed(seed)
    model = copy.deepcopy(theta)
    if from_scratch:
        model.reset_parameters()
    model = model.to(device)
    train = PairMatrix.build(pairs, TRAIN, group, model.num_tasks)
    x_train = _rows(features, train.rows, device)
    labels, weights = train.labels.to(device), train.weights.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)

    split = taskset.split[:, eval_tasks]
    val_rows = np.flatnonzero((split == VAL).any(axis=1))
    x_val = _rows(features, val_rows, device)
    val_labels = taskset.labels[val_rows][:, eval_tasks]
    val_split = np.where(split[val_rows] == VAL, VAL, 0).astype(np.int8)

    best_val = np.full(eval_tasks.size, -np.inf)
    best_epoch = np.zeros(eval_tasks.size, dtype=np.int64)
    snapshots: dict[int, dict] = {}
    for epoch in range(1, epochs + 1):
        train_epoch(model, optimizer, x_train, labels, weights, batch_size, generator)
        val_ap = per_task_metrics(predict(model, x_val)[:, eval_tasks], val_labels, val_split)["val_ap"]
        improved = (np.nan_to_num(val_ap, nan=-np.inf) > best_val) | (best_epoch == 0)
        if improved.any():
            best_val[improved] = np.nan_to_num(val_ap[improved], nan=-np.inf)
            best_epoch[improved] = epoch
            snapshots[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            snapshots = {e: state for e, state in snapshots.items() if e in best_epoch}

    scores: dict[int, dict] = {}
    for epoch, state in snapshots.items():
        tasks = eval_tasks[best_epoch == epoch]
        model.load_state_dict(state)
        for task, entry in _split_scores(model, features, taskset, tasks, device).items():
            scores[task] = {"best_epoch": epoch, **entry}
    return scores


def _split_scores(model: SignMLP, features: np.ndarray, taskset: TaskSet, tasks: np.ndarray,
                  device) -> dict[int, dict]:
    """``{task: {"val_ap", "test_ap", "test_f1"}}`` of ``model`` on the validation and test rows of ``tasks``."""
    rows = np.flatnonzero(np.isin(taskset.split[:, tasks], (VAL, TEST)).any(axis=1))
    metrics = per_task_metrics(predict(model, _rows(features, rows, device))[:, tasks],
                               taskset.labels[rows][:, tasks], taskset.split[rows][:, tasks])
    return {int(task): {key: float(metrics[key][i]) for key in ("val_ap", "test_ap", "test_f1")}
            for i, task in enumerate(tasks.tolist())}


def finetune_group_gd(theta: SignMLP, features: np.ndarray, taskset: TaskSet, pairs: Pairs, group, *,
                      lr: float, steps: int, eval_tasks=None, device: str | torch.device = "cpu") -> dict[int, dict]:
    """The estimator's regime: ``steps`` full-batch GD steps from θ* on ``group`` (deterministic,
    on the CPU like the validate stage's truth, whatever ``device`` says), then each of
    ``eval_tasks`` (default: the group) scored once: ``{"val_loss", "val_ap", "test_ap",
    "test_f1"}`` (val_loss: the weighted BCE on the validation pairs the estimates use)."""
    group = np.unique(np.asarray(group, dtype=np.int64))
    eval_tasks = group if eval_tasks is None else np.unique(np.asarray(eval_tasks, dtype=np.int64))
    model = finetune_subset(copy.deepcopy(theta).cpu(), features, pairs, group, lr=lr, steps=steps)
    losses = per_task_losses(model, features, validation_matrix(pairs, model.num_tasks))
    return {task: {"val_loss": float(losses[task]), **entry}
            for task, entry in _split_scores(model, features, taskset, eval_tasks, "cpu").items()}


def finetune_trial(params: dict) -> dict:
    """One Tune trial: fine-tune each group in ``params["groups"]`` (same seed and settings);
    ``"groups"`` of the result holds each group's per-task scores, in order."""
    torch.set_num_threads(int(params["threads"]))
    device = "cuda" if params["gpu"] and torch.cuda.is_available() else "cpu"
    gd = params.get("optimizer") == "gd"
    if is_text_run(params["run_dir"]):  # LoRA θ* on tokenized examples; scores are losses and accuracies
        text = TextFinetune.cached(params["run_dir"], device)
        finetune = text.finetune_group_gd if gd else text.finetune_group
    else:
        finetune = functools.partial(finetune_group_gd if gd else finetune_group,
                                     *load_finetune_inputs(params["run_dir"]))
    settings = ({"lr": params["lr"], "steps": params["steps"]} if gd else
                {"epochs": params["epochs"], "lr": params["lr"], "seed": params["seed"],
                 "batch_size": params["batch_size"], "from_scratch": params["from_scratch"]})
    started, cpu_started = time.perf_counter(), time.process_time()
    scores = []
    for group in params["groups"]:
        result = finetune(group, eval_tasks=params.get("eval_tasks"), device=device, **settings)
        scores.append({str(task): value for task, value in result.items()})
        tasks_trained(len(group))
    return {"groups": scores, "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu_started}


def finetune_jobs(run: RunDir, config: RaytagConfig, label: str, seed: int, groups: list[list[int]],
                  eval_tasks: list[int] | None = None, gpu: bool = False, estimator_regime: bool = False) -> dict:
    """A trial's params; its id carries a hash of everything that changes the result, so a
    cached result is reused only for the same θ*, groups and settings. ``estimator_regime``:
    the deterministic GD fine-tune of ``finetune.*`` from θ* instead of ``groups.*`` Adam from
    ``groups.init``."""
    text = config.data.format == "text"
    if estimator_regime:
        settings = {"optimizer": "gd", "lr": config.finetune.lr, "steps": config.finetune.steps}
    else:
        settings = {"epochs": config.groups.epochs, "lr": config.groups.lr,
                    "batch_size": config.lm.batch_size if text else FINETUNE_BATCH_SIZE, "seed": int(seed),
                    "from_scratch": config.groups.init == "scratch"}
    groups = [sorted(int(t) for t in group) for group in groups]
    theta = lm_adapter_file(run) if text else run.checkpoint
    digest = config_hash({"theta": file_hash(theta), "groups": groups, "eval_tasks": eval_tasks, **settings})
    return {"id": f"{label}-seed{seed}-{digest}", "run_dir": run.location, "groups": groups,
            "eval_tasks": eval_tasks, "threads": 1, "gpu": gpu, **settings}


def run_finetunes(run: RunDir, config: RaytagConfig, jobs: list[dict], name: str) -> list[dict]:
    """Run fine-tune trials on Ray Tune (one CPU each, a GPU share when the cluster has GPUs)."""
    gpu = any(job["gpu"] for job in jobs)
    return run_trials(finetune_trial, jobs, results_dir=run.root / f"{name}_trials", run=run,
                      name=name, cpus_per_trial=1.0, gpus_per_trial=GPU_SHARE if gpu else 0.0)


def evaluate_groupings(run: RunDir, config: RaytagConfig) -> dict:
    """Fine-tune every strategy's groups from θ* and write ``groups_eval.json`` (see module doc)."""
    if config.data.format == "text":
        raise ValueError("`raytag groups` scores graph tasks (AP, F1, PageRank) and does not run on text runs "
                         "(data.format=text) yet; use `raytag select --verify` to check fine-tunes of a text run")
    started = time.perf_counter()
    ensure_ray(config.ray)
    gpu = use_gpu(config.training.use_gpu)
    taskset = TaskSet.load(run.taskset)
    names, n = taskset.names, taskset.num_tasks
    groups, notes = _raytag_groups(run, names)
    sizes = [len(group) for group in groups]
    single = list(range(min(n, config.groups.single_task_limit)))
    if len(single) < n:
        notes.append(f"single_task covers the first {len(single)} of {n} tasks (groups.single_task_limit)")
    seeds = list(range(config.groups.seeds))

    plan: dict[tuple[str, int], list[dict]] = {}
    for seed in seeds:
        plan["raytag_groups", seed] = [finetune_jobs(run, config, f"raytag{i}", seed, [g], gpu=gpu)
                                       for i, g in enumerate(groups)]
        plan["all_in_one", seed] = [finetune_jobs(run, config, "all", seed, [list(range(n))], gpu=gpu)]
        plan["single_task", seed] = [finetune_jobs(run, config, f"single{i}", seed, [[t] for t in chunk], gpu=gpu)
                                     for i, chunk in enumerate(_chunks(single, SINGLE_TASKS_PER_TRIAL))]
        plan["random_groups", seed] = [finetune_jobs(run, config, f"random{i}", seed, [g], gpu=gpu)
                                       for i, g in enumerate(random_grouping(sizes, n, seed=seed))]
    regime_plan = {("raytag_groups", 0): [finetune_jobs(run, config, "gd-raytag", 0, groups, gpu=gpu,
                                                        estimator_regime=True)],
                   ("all_in_one", 0): [finetune_jobs(run, config, "gd-all", 0, [list(range(n))], gpu=gpu,
                                                     estimator_regime=True)]}
    for seed in seeds:
        regime_plan["random_groups", seed] = [finetune_jobs(run, config, "gd-random", seed, random_grouping(
            sizes, n, seed=seed), gpu=gpu, estimator_regime=True)]
    jobs = [job for batch in (*plan.values(), *regime_plan.values()) for job in batch]
    results = dict(zip((job["id"] for job in jobs), run_finetunes(run, config, jobs, "groups")))

    strategies = {}
    for strategy in LEARNED:
        per_seed = [_best_per_task([results[job["id"]] for job in plan[strategy, seed]]) for seed in seeds]
        trials = [results[job["id"]] for seed in seeds for job in plan[strategy, seed]]
        strategies[strategy] = _summarize(per_seed, names, sum(trial["seconds"] for trial in trials),
                                          sum(trial["cpu_seconds"] for trial in trials))
    train_metrics = run.load_json(run.train_metrics, "train")
    own_best = train_metrics["test_each_task_best_epoch"]
    strategies["all_in_one_best_epoch"] = {"mean_test_ap": own_best["mean_test_ap"],
                                           "mean_test_f1": own_best["mean_test_f1"],
                                           "std_test_ap": None, "std_test_f1": None, "per_task": {}}
    ppr = train_metrics["ppr_baseline"]
    strategies["ppr"] = {"mean_test_ap": ppr["mean_test_ap"], "mean_test_f1": ppr["mean_test_f1"],
                         "std_test_ap": None, "std_test_f1": None,
                         "per_task": {name: {"test_ap": _finite_or_none(ap)}
                                      for name, ap in ppr["per_task_test_ap"].items()}}
    notes.append("all_in_one_best_epoch: θ* itself, each task at its own best training epoch (metrics/train.json); "
                 "ppr: personalized PageRank from each task's training seeds, not learned; both are single runs")

    ours = strategies["raytag_groups"]
    margins = {f"vs_{other}": {"test_ap": ours["mean_test_ap"] - strategies[other]["mean_test_ap"],
                               "test_f1": ours["mean_test_f1"] - strategies[other]["mean_test_f1"]}
               for other in ("all_in_one", "random_groups", "single_task", "all_in_one_best_epoch", "ppr")}
    if len(single) < n:  # the means above cover different tasks: compare on the single-task ones too
        margins["vs_single_task_same_tasks"] = {key: _common_task_margin(ours, strategies["single_task"], key)
                                                for key in ("test_ap", "test_f1")}
    result = {
        "strategies": strategies,
        "estimator_regime": _estimator_regime(config, regime_plan, results, names, seeds),
        "seeds": seeds,
        "groups": [[names[t] for t in group] for group in groups],
        "margins": margins,
        "noise": _noise(strategies, len(seeds)),
        "settings": {"init": config.groups.init, "epochs": config.groups.epochs, "lr": config.groups.lr,
                     "batch_size": FINETUNE_BATCH_SIZE, "optimizer": "adam",
                     "epoch_choice": "each task's best validation AP"},
        "notes": notes,
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(run.groups_eval, result)
    return result


def _raytag_groups(run: RunDir, names: list[str]) -> tuple[list[list[int]], list[str]]:
    """groups.json's groups as task indices; tasks in no group form one extra group (noted)."""
    saved = run.load_json(run.groups_json, "cluster")
    index = {name: i for i, name in enumerate(names)}
    unknown = [name for group in saved["groups"] for name in group if name not in index]
    if unknown:
        raise ValueError(f"{run.groups_json}: task names {unknown[:5]} are not in the run's tasks "
                         f"(e.g. {names[:5]}); rerun `raytag cluster --run-dir {run.root}`")
    groups = [sorted(index[name] for name in group) for group in saved["groups"] if group]
    notes = []
    covered = {t for group in groups for t in group}
    left = sorted(set(range(len(names))) - covered)
    if left:
        groups.append(left)
        notes.append(f"{len(left)} tasks in no group of groups.json were trained together as one extra group")
    if sum(len(group) for group in groups) > len(names):
        notes.append("groups overlap: a task in several groups is scored by the group with its best validation AP")
    return groups, notes


def _chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _estimator_regime(config: RaytagConfig, plan: dict, results: dict, names: list[str], seeds: list[int]) -> dict:
    """Per strategy the task means of validation loss, test AP and F1 under the GD fine-tune
    (random groups: mean over the ``seeds`` draws), and raytag's per-task wins over random groups."""
    table = {}
    for strategy in ("raytag_groups", "all_in_one", "random_groups"):
        draws = [_best_per_task([results[job["id"]] for job in plan[strategy, seed]])
                 for seed in (seeds if strategy == "random_groups" else [0])]
        table[strategy] = {key: np.nanmean([[draw[t][key] for t in range(len(names))] for draw in draws], axis=0)
                           for key in ("val_loss", "test_ap", "test_f1")}
    ours, random = table["raytag_groups"], table["random_groups"]
    return {
        "settings": {"optimizer": "full-batch gradient descent", "lr": config.finetune.lr,
                     "steps": config.finetune.steps, "random_draws": len(seeds)},
        "strategies": {strategy: {f"mean_{key}": float(np.nanmean(values)) for key, values in scores.items()}
                       for strategy, scores in table.items()},
        "tasks_better_than_random": {"val_loss": int((ours["val_loss"] < random["val_loss"]).sum()),
                                     "test_ap": int((ours["test_ap"] > random["test_ap"]).sum()),
                                     "test_f1": int((ours["test_f1"] > random["test_f1"]).sum()),
                                     "of": len(names)},
    }


def _best_per_task(trials: list[dict]) -> dict[int, dict]:
    """Merge one seed's trials; a task trained in several groups keeps its best-validation entry."""
    best: dict[int, dict] = {}
    for group in (group for trial in trials for group in trial["groups"]):
        for task, entry in group.items():
            task = int(task)
            if task not in best or _val(entry) > _val(best[task]):
                best[task] = entry
    return best


def _val(entry: dict) -> float:
    value = entry["val_ap"]
    return -np.inf if value is None or not np.isfinite(value) else value


def _summarize(per_seed: list[dict[int, dict]], names: list[str], seconds: float, cpu_seconds: float) -> dict:
    """Means over tasks per seed, then mean and seed-to-seed std of those; per task, the seed mean."""
    tasks = sorted(set().union(*per_seed))
    table = {key: np.array([[seed_result.get(t, {}).get(key, np.nan) for t in tasks] for seed_result in per_seed],
                           dtype=np.float64) for key in ("test_ap", "test_f1", "val_ap")}
    with warnings.catch_warnings():  # a task without positives stays NaN on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        seed_means = {key: np.nanmean(values, axis=1) for key, values in table.items()}
        task_means = {key: np.nanmean(values, axis=0) for key, values in table.items()}
    return {
        "mean_test_ap": float(np.mean(seed_means["test_ap"])),
        "mean_test_f1": float(np.mean(seed_means["test_f1"])),
        "mean_val_ap": float(np.mean(seed_means["val_ap"])),
        "std_test_ap": _seed_std(seed_means["test_ap"]),
        "std_test_f1": _seed_std(seed_means["test_f1"]),
        "per_seed_test_ap": seed_means["test_ap"].tolist(),
        "per_task": {names[t]: {"test_ap": _finite_or_none(task_means["test_ap"][i]),
                                "test_f1": _finite_or_none(task_means["test_f1"][i])} for i, t in enumerate(tasks)},
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


def _common_task_margin(ours: dict, theirs: dict, key: str) -> float:
    """Mean per-task difference over the tasks both strategies scored."""
    common = [t for t, entry in theirs["per_task"].items()
              if entry[key] is not None and ours["per_task"].get(t, {}).get(key) is not None]
    return float(np.mean([ours["per_task"][t][key] - theirs["per_task"][t][key] for t in common]))


def _noise(strategies: dict, num_seeds: int) -> dict:
    """Seed-to-seed std of a strategy's mean, pooled over the learned strategies (RMS)."""
    if num_seeds < 2:
        return {"test_ap": None, "test_f1": None, "how": "one seed: no noise estimate (set groups.seeds >= 2)"}
    return {key: float(np.sqrt(np.mean([strategies[s][f"std_{key}"] ** 2 for s in LEARNED])))
            for key in ("test_ap", "test_f1")} | {
        "how": f"std (ddof=1) over {num_seeds} seeds of each learned strategy's mean, pooled as RMS; a margin "
               "smaller than about twice this is within noise"}


def _seed_std(values: np.ndarray) -> float | None:
    return float(np.std(values, ddof=1)) if values.size > 1 else None


def _finite_or_none(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _rows(features: np.ndarray, rows: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(features[rows], dtype=np.float32)).to(device)


__all__ = ["evaluate_groupings", "finetune_group", "finetune_group_gd", "finetune_jobs", "finetune_trial", "load_finetune_inputs",
           "run_finetunes"]
