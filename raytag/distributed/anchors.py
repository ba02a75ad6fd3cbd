"""Anchor fine-tunes for the estimate stage (see :mod:`raytag.estimate.anchors`).

The anchors are real deterministic fine-tunes — the same Tune trial ``raytag validate``
runs — on a seeded partition of the tasks; each result is cached as JSON under
``estimate/anchors-<hash>/``, so a rerun or a killed driver only repeats missing ones.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from raytag.config import RaytagConfig
from raytag.estimate.anchors import anchor_offsets, anchor_subsets
from raytag.estimate.estimators import SubsetEstimator
from raytag.rundir import RunDir

log = logging.getLogger(__name__)


def anchor_calibration(run: RunDir, config: RaytagConfig, estimator: SubsetEstimator, names: list[str],
                       steps: int) -> dict:
    """Fine-tune θ* on each anchor for ``steps`` steps, compare with ``estimator`` (fitted) and
    return the calibration record (``offsets`` in task order, the anchors by name, their FLOPs)."""
    from raytag.distributed.tune import run_trials
    from raytag.distributed.validate import finetune_cache_key, finetune_job, finetune_trial

    n_tasks = len(names)
    lr = config.finetune.lr
    anchors = anchor_subsets(n_tasks, min(config.estimate.subset_size, n_tasks), seed=config.estimate.seed)
    jobs = [finetune_job(run, "anchor", anchor, optimizer="gd", lr=lr, steps=steps, seed=0) for anchor in anchors]
    digest = finetune_cache_key(run, config, lr=lr, steps=steps)
    log.info("estimate: %d anchor fine-tunes calibrate each task's loss level", len(jobs))
    started = time.perf_counter()
    results = run_trials(finetune_trial, jobs, results_dir=run.estimate_dir / f"anchors-{digest}",
                         run=run, name="anchors")
    true = np.array([r["losses"] for r in results], dtype=np.float64)  # None -> NaN
    estimated = np.stack([estimator.predict(anchor[None, :])[0] for anchor in anchors])
    offsets = anchor_offsets(anchors, true, estimated, n_tasks)
    record = {"anchors": [[names[t] for t in anchor] for anchor in anchors],
              "tasks": names, "offsets": offsets.tolist(),
              "flops": float(sum(r["flops"] for r in results)),
              "seconds": round(time.perf_counter() - started, 3),
              "lr": lr, "steps": steps}
    return record
