"""Many independent fine-tunes at once on Ray Tune, one trial per job.

Each finished trial's result is saved under ``results_dir`` as JSON, so re-running the same
command only runs the trials that did not finish (a killed driver loses nothing else).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ray import tune

from raytag.io import atomic_write_json


def run_trials(job: Callable[[dict], dict], jobs: list[dict], *, results_dir: Path, storage_path: Path,
               name: str, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0) -> list[dict]:
    """Run ``job(params)`` for every params dict in ``jobs`` (each needs a unique ``"id"``)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    pending = [params for params in jobs if not (results_dir / f"{params['id']}.json").is_file()]
    if pending:
        def trainable(trial_config: dict) -> None:
            params = trial_config["params"]
            result = job(params)
            atomic_write_json(results_dir / f"{params['id']}.json", result)
            tune.report({"done": 1})

        resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"params": tune.grid_search(pending)},
            # reuse trial processes: starting one (torch import, features load) costs more than a short fine-tune
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(storage_path), verbose=0),
        )
        grid = tuner.fit()
        failed = [str(r.error) for r in grid if r.error is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(pending)} {name} trials failed; first error: {failed[0]}")
    return [_read(results_dir / f"{params['id']}.json") for params in jobs]


def _read(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)
