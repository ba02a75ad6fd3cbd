"""Many independent fine-tunes at once on Ray Tune, one trial per job.

Each finished trial's result is saved under ``results_dir`` as JSON (and pushed at once when
the run directory is remote), so re-running the same command only runs the trials that did
not finish (a killed driver loses nothing else).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ray import tune

from raytag.io import atomic_write_json
from raytag.rundir import RunDir


def run_trials(job: Callable[[dict], dict], jobs: list[dict], *, run: RunDir, results_dir: Path,
               name: str, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0) -> list[dict]:
    """Run ``job(params)`` for every params dict in ``jobs`` (each needs a unique ``"id"``);
    ``results_dir`` lies in ``run``'s directory."""
    results_dir.mkdir(parents=True, exist_ok=True)
    relative = results_dir.relative_to(run.root)  # the same place in a trial node's working copy
    pending = [params for params in jobs if not (results_dir / f"{params['id']}.json").is_file()]
    if pending:
        def trainable(trial_config: dict) -> None:
            params = trial_config["params"]
            result = job(params)
            path = run.root / relative / f"{params['id']}.json"  # ``run`` arrives as this node's RunDir
            atomic_write_json(path, result)
            run.push(path)
            tune.report({"done": 1})

        resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space={"params": tune.grid_search(pending)},
            # reuse trial processes: starting one (torch import, features load) costs more than a short fine-tune
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=run.ray_results, verbose=0),
        )
        grid = tuner.fit()
        failed = [str(r.error) for r in grid if r.error is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(pending)} {name} trials failed; first error: {failed[0]}")
        run.pull(results_dir)  # results of trials on other nodes
    return [_read(results_dir / f"{params['id']}.json") for params in jobs]


def _read(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)
