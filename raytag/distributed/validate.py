"""Validate the estimator against real fine-tuning: Ray Tune fine-tunes θ* on sampled subsets.

The truth is deterministic (full-batch gradient descent, one thread, deterministic kernels)
so that "which subset helps task t more" has one answer; one subset is fine-tuned twice to
show it, and a few subsets are also fine-tuned with seeded minibatch Adam under two seeds to
show how noisy a stochastic truth would be. Every metric sits beside the ``no_change`` and
``task_mean`` baselines (:func:`raytag.estimate.metrics.validation_metrics`).

Each fine-tune is one Tune trial whose result is cached as JSON under
``run/validate/trials-<hash>/`` (the hash covers θ*, the pairs and the fine-tune settings),
so a rerun — or a run killed half-way — only fine-tunes what is missing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from raytag.config import RaytagConfig
from raytag.io import atomic_write_json, config_hash, file_hash, read_json
from raytag.rundir import RunDir

log = logging.getLogger(__name__)

MIN_APPEARANCES = 8  # subsets per validated task: enough points for a within-task rank correlation
STOCHASTIC_SEEDS = (0, 1)


# --------------------------------------------------------------------------- one fine-tune


def finetune_and_evaluate(params: dict) -> dict:
    """Fine-tune θ* on ``params["subset"]`` and return every task's validation loss.

    Reads everything from the run directory (so a Tune worker needs only the params) and
    times the fine-tune alone, not the loading or the evaluation.
    """
    import torch

    from raytag.data.pairs import Pairs
    from raytag.lm.finetune import TextFinetune, is_text_run
    from raytag.models import load_model
    from raytag.models.finetune import finetune_flops, finetune_subset, per_task_losses, validation_matrix

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(params["seed"])
    run = RunDir(params["run_dir"])
    run.pull(*run.worker_inputs())
    subset = np.asarray(params["subset"], dtype=np.int64)
    gd = params["optimizer"] == "gd"
    if is_text_run(run.root):
        text = TextFinetune.cached(str(run.root))
        losses, seconds = text.finetune(subset, lr=params["lr"], steps=params["steps"],
                                        optimizer=params["optimizer"], seed=params["seed"])
        flops = text.finetune_flops(subset, params["steps"]) if gd else None
    else:
        model = load_model(run.checkpoint)
        features = np.load(run.features, mmap_mode="r")
        pairs = Pairs.load(run.pairs)
        started = time.perf_counter()
        finetune_subset(model, features, pairs, subset, lr=params["lr"], steps=params["steps"],
                        optimizer=params["optimizer"], seed=params["seed"])
        seconds = time.perf_counter() - started
        losses = per_task_losses(model, features, validation_matrix(pairs, model.num_tasks))
        flops = finetune_flops(model, pairs, subset, params["steps"]) if gd else None
    return {"id": params["id"], "optimizer": params["optimizer"], "subset": subset.tolist(),
            "seed": params["seed"], "seconds": seconds, "flops": flops,
            "losses": [float(x) if np.isfinite(x) else None for x in losses]}


def finetune_trial(params: dict) -> dict:
    """The Tune job: one fine-tune, its tasks counted on the Ray metrics endpoint."""
    from raytag.distributed.metrics import tasks_trained

    result = finetune_and_evaluate(params)
    tasks_trained(len(params["subset"]))
    return result


def finetune_cache_key(run: RunDir, config: RaytagConfig, **settings) -> str:
    """Hash of θ*, the pairs and the fine-tune ``settings``: cached trial results stay valid
    exactly as long as it does."""
    from raytag.lm.finetune import TextFinetune

    checkpoint = TextFinetune.cached(str(run.root)).checkpoint if config.data.format == "text" else run.checkpoint
    return config_hash({"checkpoint": file_hash(checkpoint), "pairs": file_hash(run.pairs), **settings})


# --------------------------------------------------------------------------- design


def _design(n_tasks: int, config: RaytagConfig):
    """The validation design, with the per-task appearance floor lowered when the task pool
    is too small for :data:`MIN_APPEARANCES` (recorded in the design)."""
    from raytag.estimate.subsets import validation_design

    settings = config.validate_
    n_validated = min(settings.n_validated_tasks, n_tasks)
    size = min(config.estimate.subset_size, n_validated)
    reachable = settings.n_subsets * size // n_validated
    if reachable < 1:
        raise ValueError(f"validate.n_subsets={settings.n_subsets} subsets of {size} tasks cannot cover "
                         f"{n_validated} validated tasks; raise validate.n_subsets or lower "
                         "validate.n_validated_tasks")
    floor = min(MIN_APPEARANCES, reachable)
    if floor < MIN_APPEARANCES:
        log.warning("validate: each validated task appears in only %d subsets (< %d): raise "
                    "validate.n_subsets for a reliable within-task Spearman", floor, MIN_APPEARANCES)
    return validation_design(n_tasks, n_validated=n_validated, n_subsets=settings.n_subsets, size=size,
                             seed=settings.seed, min_appearances=floor)


def _overlapping_subsets(subsets: np.ndarray, n_tasks: int, k: int) -> np.ndarray:
    """``k`` design subsets chosen greedily to share tasks, so that tasks recur across them
    (a within-task rank correlation needs a task in at least three subsets)."""
    from raytag.estimate.subsets import membership_matrix

    member = membership_matrix(subsets, n_tasks).astype(np.int64)
    chosen = [0]
    counts = member[0].copy()
    while len(chosen) < k:
        overlap = member @ counts
        overlap[chosen] = -1
        best = int(np.argmax(overlap))
        chosen.append(best)
        counts += member[best]
    return np.asarray(chosen[:k], dtype=np.int64)


def finetune_job(run: RunDir, kind: str, subset: np.ndarray, *, optimizer: str, lr: float, steps: int, seed: int) -> dict:
    """Trial params; the id names the subset itself, so cached results follow the subset."""
    return {"id": f"{kind}-s{seed}-" + "_".join(map(str, subset.tolist())), "run_dir": run.location,
            "subset": subset.tolist(), "optimizer": optimizer, "lr": lr, "steps": steps, "seed": seed}


# --------------------------------------------------------------------------- FLOPs of the estimation route


def _projection_flops_per_pair(projector, params: int) -> float:
    """One pair's projected gradient. Factored path: forward + backward of ``δ`` only (≈ 4 · params;
    the weight-gradient GEMMs are replaced by the projection). Exact path: forward + backward
    (≈ 6 · params), then the materialized D-dim gradient times a [D, d] matrix."""
    from raytag.grads.projectors import KroneckerProjector

    if isinstance(projector, KroneckerProjector):
        return 4.0 * params + projector.projection_flops()
    return 6.0 * params + 2.0 * projector.D * projector.d


def _projector_fit_flops(spec: dict, params: int) -> float:
    """Fitting an informed subspace on its gradient sample (random projectors: ~0)."""
    source = spec.get("source")
    if source == "taskgrad":  # one pass over the training pairs, then per-layer eigenbases and per-task SVDs
        n_fit, n = spec["n_fit_pairs"], spec["n_tasks"]
        pass_flops = n_fit * (6.0 * params + 2.0 * spec["D"])
        layers = sum(4.0 * n * out * (inp + bias) * (out + inp + bias) + 9.0 * (out ** 3 + (inp + bias) ** 3)
                     + n * 4.0 * out * (inp + bias) * min(out, inp + bias) for out, inp, bias in spec["layers"])
        return pass_flops + layers
    if source == "kfac":
        n_fit = spec["n_fit_pairs"]
        passes = 2 if spec.get("eigenvalue_correction") else 1
        factors = sum((inp + bias) ** 2 + out ** 2 for out, inp, bias in spec["layers"])
        eigh = sum(9.0 * ((inp + bias) ** 3 + out ** 3) for out, inp, bias in spec["layers"])
        correction = sum(2.0 * out * (inp + bias) for out, inp, bias in spec["layers"]) if passes == 2 else 0.0
        return passes * n_fit * (6.0 * params + 2.0 * factors) + n_fit * correction + eigh
    if source == "svd":
        n_fit, D, d = spec["n_fit_rows"], spec["D"], spec["d"]
        k = min(d + spec.get("oversample", 10), D)
        iters = spec.get("power_iters", 2)
        return n_fit * 6.0 * params + iters * (4.0 * n_fit * D * k + 4.0 * D * k * k) + 2.0 * n_fit * D * k
    return 0.0


def _estimator_flops(estimator, train_pairs: np.ndarray, val_pairs: np.ndarray, total_train_pairs: int,
                     subset_sizes: np.ndarray) -> float:
    """All subset fits plus the evaluation of each subset's own tasks on their validation pairs
    (the estimate stage evaluates members only: all the affinity matrix reads).

    ``train_pairs`` / ``val_pairs`` [m]: pairs of each subset's tasks. Linearized: two GEMMs of
    ``pairs × d`` per step; one-step Newton: per-task Hessians once, then a d×d combine and
    solve per subset; Newton/seed: ``max_iter`` full IRLS iterations (an upper bound).
    """
    from raytag.estimate.estimators import LinearizedFineTune, OneStepNewton

    d = estimator.d_
    evaluation = 2.0 * d * val_pairs.sum()
    if isinstance(estimator, LinearizedFineTune):
        return float(estimator.steps * 2 * 2.0 * d * train_pairs.sum()) + evaluation
    if isinstance(estimator, OneStepNewton):
        statistics = 2.0 * total_train_pairs * d * d
        return statistics + float((subset_sizes * d * d).sum() + train_pairs.size * d ** 3 / 3) + evaluation
    per_iteration = 4.0 * d * train_pairs.sum() + 2.0 * d * d * train_pairs.sum() + train_pairs.size * d ** 3 / 3
    return float(estimator.max_iter * per_iteration) + evaluation


def _graph_model_flops(config: RaytagConfig, model, taskset, projector, spec: dict, num_pairs: int) -> dict:
    """θ*'s training, the projected gradients and the projector fit of a graph run (a text run's
    ``TextFinetune.route_flops`` counts its own)."""
    from raytag.estimate.stats import TRAIN

    params = sum(p.numel() for p in model.parameters())
    training_rows = int((taskset.split == TRAIN).any(axis=1).sum())
    return {"theta_star": 6.0 * params * training_rows * config.training.epochs,
            "gradients": _projection_flops_per_pair(projector, params) * num_pairs,
            "projector_fit": _projector_fit_flops(spec, params)}


def _route_flops(run: RunDir, config: RaytagConfig, estimator, model_flops: dict, data,
                 anchors_flops: float) -> dict:
    """Analytic FLOPs of the whole estimation route for the run's m subsets (the anchor
    fine-tunes included); ``model_flops``: θ*, gradients and projector fit."""
    from raytag.estimate.stats import TRAIN, VAL
    from raytag.estimate.subsets import membership_matrix, sample_subsets

    subsets_file = run.estimate_dir / "subsets.npy"
    if subsets_file.is_file():
        subsets = np.load(subsets_file)
    else:
        subsets = sample_subsets(data.n_tasks, m=config.estimate.num_subsets,
                                 size=min(config.estimate.subset_size, data.n_tasks), seed=config.estimate.seed)
    member = membership_matrix(subsets, data.n_tasks)
    train_per_task, val_per_task = (
        np.bincount(data.task[data.split == split], minlength=data.n_tasks).astype(np.float64) for split in (TRAIN, VAL))
    flops = {
        **model_flops,
        "subset_fits": _estimator_flops(estimator, member @ train_per_task, member @ val_per_task,
                                        int(train_per_task.sum()), member.sum(1)),
        "anchors": anchors_flops,
    }
    flops["total"] = sum(flops.values())
    flops["m"] = int(subsets.shape[0])
    return flops


# --------------------------------------------------------------------------- the stage


def output_paths(run: RunDir, multiplier: float) -> tuple[Path, Path]:
    """``validation.json`` / ``validation_pairs.json``, suffixed ``_x{multiplier}`` when the
    fine-tune is longer (or shorter) than configured, so both runs can coexist."""
    if multiplier == 1:
        return run.validation, run.root / "validation_pairs.json"
    tag = f"x{multiplier:g}"
    return run.root / f"validation_{tag}.json", run.root / f"validation_pairs_{tag}.json"


def _losses(results: list[dict]) -> np.ndarray:
    return np.array([r["losses"] for r in results], dtype=np.float64)  # None -> NaN


def _finite_max_abs(a: np.ndarray, b: np.ndarray) -> float | None:
    diff = np.abs(a - b)[np.isfinite(a) & np.isfinite(b)]
    return float(diff.max()) if diff.size else None


def run_validation(run: RunDir, config: RaytagConfig, *, steps_multiplier: float | None = None,
                   cpus_per_trial: float = 1.0) -> dict:
    """Fine-tune θ* on the validation subsets (Ray Tune), compare with the configured estimator,
    write ``validation.json`` (or ``validation_x{mult}.json``) and the scatter-plot pairs."""
    from raytag.data.pairs import Pairs
    from raytag.data.tasks import TaskSet
    from raytag.distributed.tune import run_trials
    from raytag.estimate.metrics import validation_metrics
    from raytag.estimate.subsets import membership_matrix
    from raytag.grads import projector_from_spec
    from raytag.lm.finetune import TextFinetune
    from raytag.models import load_model
    from raytag.models.finetune import per_task_losses, validation_matrix
    from raytag.pipeline import anchor_record, load_gradient_data, make_estimator

    multiplier = float(config.validate_.steps_multiplier if steps_multiplier is None else steps_multiplier)
    if not multiplier > 0:
        raise ValueError(f"steps_multiplier must be > 0, got {multiplier}")
    lr, steps = config.finetune.lr, int(round(config.finetune.steps * multiplier))
    if steps < 1:
        raise ValueError(f"finetune.steps={config.finetune.steps} × steps_multiplier={multiplier} rounds to "
                         f"{steps} steps; use a larger multiplier")
    taskset = TaskSet.load(run.taskset)
    design = _design(taskset.num_tasks, config)
    stochastic = _overlapping_subsets(design.subsets, taskset.num_tasks,
                                      min(config.validate_.stochastic_subsets, design.subsets.shape[0]))
    adam_lr = config.groups.lr
    gd_jobs = [finetune_job(run, "gd", s, optimizer="gd", lr=lr, steps=steps, seed=0) for s in design.subsets]
    rerun_job = finetune_job(run, "gd-rerun", design.subsets[0], optimizer="gd", lr=lr, steps=steps, seed=0)
    adam_jobs = [finetune_job(run, "adam", design.subsets[k], optimizer="adam", lr=adam_lr, steps=steps,
                              seed=seed) for seed in STOCHASTIC_SEEDS for k in stochastic]
    jobs = list({job["id"]: job for job in (*gd_jobs, rerun_job, *adam_jobs)}.values())  # repeated subsets run once

    text = TextFinetune.cached(str(run.root)) if config.data.format == "text" else None
    results_dir = run.root / "validate" / f"trials-{finetune_cache_key(run, config, lr=lr, steps=steps, adam_lr=adam_lr)}"
    cached = sum((results_dir / f"{job['id']}.json").is_file() for job in jobs)
    log.info("validate: %d fine-tunes (%d cached), %d steps of lr %g", len(jobs), cached, steps, lr)
    started = time.perf_counter()
    results = run_trials(finetune_trial, jobs, results_dir=results_dir, run=run, name="validate",
                         cpus_per_trial=cpus_per_trial)
    trials_seconds = time.perf_counter() - started
    by_id = {r["id"]: r for r in results}
    gd = [by_id[job["id"]] for job in gd_jobs]
    true = _losses(gd)
    rerun = _losses([by_id[rerun_job["id"]]])[0]

    if text is None:
        model = load_model(run.checkpoint)
        features = np.load(run.features, mmap_mode="r")
        pairs = Pairs.load(run.pairs)
        base = per_task_losses(model, features, validation_matrix(pairs, taskset.num_tasks))
    else:
        base = text.base_val_losses()

    data = load_gradient_data(run)
    estimator = make_estimator(config, multiplier)
    fit_started = time.perf_counter()
    estimated = estimator.fit(data).predict(design.subsets)
    estimate_seconds = time.perf_counter() - fit_started
    anchors = anchor_record(run, config, estimator, steps=steps)
    if anchors is not None:
        estimated += np.asarray(anchors["offsets"])[None, :]

    metrics = validation_metrics(design.subsets, true, estimated, base, design.validated_tasks)
    if stochastic.size:
        adam = {seed: _losses([by_id[j["id"]] for j in adam_jobs if j["seed"] == seed]) for seed in STOCHASTIC_SEEDS}
        stochastic_spearman = validation_metrics(design.subsets[stochastic], adam[STOCHASTIC_SEEDS[0]],
                                                 adam[STOCHASTIC_SEEDS[1]], base,
                                                 design.validated_tasks)["within_task_spearman"]
    else:
        stochastic_spearman = None

    manifest = read_json(run.grad_store / "manifest.json")
    spec = manifest["projector"]
    projector = projector_from_spec(spec, run.grad_store / "projector")
    model_flops = (text.route_flops(config, projector, data.grads.shape[0]) if text else
                   _graph_model_flops(config, model, taskset, projector, spec, data.grads.shape[0]))
    flops = _route_flops(run, config, estimator, model_flops, data, anchors_flops=anchors["flops"] if anchors else 0.0)
    finetune_flops_mean = float(np.mean([r["flops"] for r in gd]))
    finetune_seconds = np.array([r["seconds"] for r in gd])
    timings = read_json(run.timings) if run.timings.is_file() else {}
    route_seconds = [timings.get(stage) for stage in ("train", "project", "estimate")]
    time_ratio = (float(sum(route_seconds) / (flops["m"] * finetune_seconds.mean()))
                  if None not in route_seconds else None)

    json_path, pairs_path = output_paths(run, multiplier)
    result = {
        **metrics,
        "rerun_max_abs_diff": _finite_max_abs(rerun, true[0]),
        "stochastic_within_task_spearman": stochastic_spearman,
        "flops_ratio": flops["total"] / (flops["m"] * finetune_flops_mean),
        "time_ratio": time_ratio,
        "n_subsets": int(design.subsets.shape[0]),
        "estimator": repr(estimator),
        "projector": spec.get("source", spec.get("kind", spec.get("type"))),
        "projector_spec": {k: v for k, v in spec.items() if k not in ("arrays", "arrays_hash")},
        "d": int(data.d),
        "steps": steps,
        "lr": lr,
        "steps_multiplier": multiplier,
        "output": json_path.name,
        "base_loss_check": _finite_max_abs(base, estimator.base_val_loss_),
        "design": design.to_dict(),
        "stochastic": {"optimizer": "adam", "lr": adam_lr, "seeds": list(STOCHASTIC_SEEDS),
                       "subsets": stochastic.tolist()},
        "flops": {**flops, "finetune_mean": finetune_flops_mean},
        "seconds": {"finetune_mean": float(finetune_seconds.mean()), "finetune_max": float(finetune_seconds.max()),
                    "trials_wall": trials_seconds, "estimate_validation_subsets": estimate_seconds,
                    "route": dict(zip(("train", "project", "estimate"), route_seconds))},
        "trials_run": len(jobs) - cached,
        "trials_cached": cached,
    }
    counted = (membership_matrix(design.subsets, taskset.num_tasks)
               & np.isin(np.arange(taskset.num_tasks), design.validated_tasks)[None, :] & np.isfinite(true))
    subset_index, task_index = np.nonzero(counted)
    atomic_write_json(pairs_path, {"true": true[counted].tolist(), "estimated": estimated[counted].tolist(),
                                   "base": base[task_index].tolist(), "subset": subset_index.tolist(),
                                   "task": task_index.tolist()})
    atomic_write_json(json_path, result)
    log.info("validate: within-task Spearman %s (no change %s, task mean %s), Δ relative error %s, "
             "affinity Spearman %s, FLOPs ratio %.4f -> %s", _fmt(result["within_task_spearman"]),
             _fmt(metrics["baselines"]["no_change"]["within_task_spearman"]),
             _fmt(metrics["baselines"]["task_mean"]["within_task_spearman"]),
             _fmt(result["delta_relative_error"]), _fmt(result["affinity_spearman"]), result["flops_ratio"], json_path)
    return result


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
