"""raytag's dashboard metrics, published through ``ray.util.metrics``.

Ray exports them in Prometheus format on every node's metrics port with a ``ray_`` prefix
(counters also as ``..._total``): ``ray_raytag_stage_progress{stage="project"}``,
``ray_raytag_tasks_trained_total``. Each metric object is created once per process (Ray
registers one per name), and every helper is a no-op without a Ray session, so the pure
stages and tests can call them unconditionally.
"""

from __future__ import annotations

from functools import cache

import ray
from ray.util.metrics import Counter, Gauge

STAGE_PROGRESS = "raytag_stage_progress"
TASKS_TRAINED = "raytag_tasks_trained"


@cache
def _stage_progress_gauge() -> Gauge:
    return Gauge(STAGE_PROGRESS, description="Fraction done of the running raytag stage (0..1)",
                 tag_keys=("stage",))


@cache
def _tasks_trained_counter() -> Counter:
    return Counter(TASKS_TRAINED, description="Per-group / per-task trainings finished")


def stage_progress(stage: str, fraction: float) -> None:
    """Publish how far ``stage`` is (clipped to 0..1); 0 when it starts, 1 when it ends."""
    if not ray.is_initialized():
        return
    _stage_progress_gauge().set(min(1.0, max(0.0, float(fraction))), tags={"stage": str(stage)})


def tasks_trained(n: int = 1) -> None:
    """Count ``n`` finished trainings (a group's model, a single-task baseline, a fine-tune)."""
    if n < 0:
        raise ValueError(f"tasks_trained: n={n}; a counter only goes up (n >= 0)")
    if n == 0 or not ray.is_initialized():
        return
    _tasks_trained_counter().inc(int(n))
