"""The ``raytag`` command line: one command per stage, plus ``run`` and ``demo``.

Every command takes ``--run-dir`` (a local path, or a URI such as ``s3://bucket/prefix``:
see :mod:`raytag.storage`); the config is the CONFIG argument when given (it is saved as
``RUN_DIR/config.yaml``), else the run directory's saved config. ``--set
section.field=value`` overrides any field.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

import typer

from raytag.config import ConfigError, RaytagConfig, describe_fields, load_config
from raytag.pipeline import RUN_STAGES, STAGES, run_stage, save_config
from raytag.rundir import RunDir
from raytag.storage import RunDirError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="raytag: find which tasks to train together, from projected per-sample gradients, on Ray.")
log = logging.getLogger("raytag")

RUN_DIR = typer.Option(..., "--run-dir", "-r", help="Run directory: every stage reads and writes only here. "
                       "A local path, or a URI (s3://bucket/prefix, gs://bucket/prefix) for multi-node clusters.")
CONFIG = typer.Argument(None, help="YAML config (or a packaged name such as dblp_demo). Default: RUN_DIR/config.yaml.")
SET = typer.Option([], "--set", "-s", help="Override a config field, e.g. --set training.epochs=5 (repeatable).")
ADDRESS = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray).")
FORCE = typer.Option(False, "--force", help="Rerun even when the stage is done with the same config.")


def _resolve_config(run: RunDir, config_path: Optional[str], overrides: list[str]) -> RaytagConfig:
    if config_path is None and not run.config_yaml.is_file():
        raise ConfigError(f"no config: pass a CONFIG file (e.g. `raytag run dblp_demo --run-dir {run.location}`) "
                          f"or use a run directory that has config.yaml")
    config = load_config(config_path if config_path is not None else run.config_yaml, overrides)
    return config


def _execute(stages: list[str], run_dir: str, config_path: Optional[str], overrides: list[str],
             address: Optional[str], force: bool) -> RunDir:
    """Run stages in order; a run directory this call created is removed again if it fails."""
    run = RunDir(run_dir)
    created = run.is_empty()
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        run.pull(run.root, mirror=True)
        config = _resolve_config(run, config_path, overrides)
        save_config(run, config)
        if any(s.needs_ray for s in STAGES if s.name in stages):
            from raytag.distributed.session import ensure_ray

            ensure_ray(config.ray, address)
        for name in stages:
            run_stage(run, config, name, force=force)
    except BaseException:
        finished = run.root.is_dir() and any(p for p in (run.root / "stages").glob("*.json")
                                             if not p.name.endswith(".started.json"))
        if created and not finished:  # keep finished stages, even on Ctrl-C
            run.remove(run.root)
        raise
    return run


def _stage_command(name: str, help_text: str):
    def command(run_dir: str = RUN_DIR, config: Optional[str] = CONFIG, set_: List[str] = SET,
                address: Optional[str] = ADDRESS, force: bool = FORCE) -> None:
        _execute([name], run_dir, config, set_, address, force)

    command.__name__ = name
    command.__doc__ = help_text
    return command


for _stage in STAGES:
    app.command(name=_stage.name, help=_stage.help)(_stage_command(_stage.name, _stage.help))


@app.command()
def run(config: Optional[str] = CONFIG, run_dir: str = RUN_DIR, set_: List[str] = SET,
        address: Optional[str] = ADDRESS, force: bool = FORCE) -> None:
    """Run prepare → train → project → estimate → affinity → cluster → report, skipping finished stages."""
    done = _execute(RUN_STAGES, run_dir, config, set_, address, force)
    typer.echo(f"run finished: {done.location}")
    typer.echo(f"report: {done.location_of(done.report_html)}")


@app.command()
def demo(run_dir: str = typer.Option("runs/dblp-demo", "--run-dir", "-r", help="Where the demo writes."),
         set_: List[str] = SET) -> None:
    """The whole pipeline on the vendored DBLP data with embedded local Ray (offline)."""
    done = _execute(RUN_STAGES, run_dir, "dblp_demo", set_, None, False)
    typer.echo(f"demo finished: {done.location}")
    typer.echo(f"report: {done.location_of(done.report_html)}")


@app.command()
def select(run_dir: str = RUN_DIR,
           target: List[str] = typer.Option([], "--target", "-t", help="Target task name (repeatable; default: select.targets, else the first task)."),
           budget: Optional[int] = typer.Option(None, "--budget", "-k", help="Auxiliary tasks to choose (default: select.budget)."),
           verify: bool = typer.Option(False, "--verify", help="Really fine-tune target+chosen against alone, random and similarity-ranked sources (seeded Adam from groups.init, and the estimator's deterministic GD regime from θ*)."),
           set_: List[str] = SET, address: Optional[str] = ADDRESS) -> None:
    """GradEx source selection: the auxiliary tasks worth adding to a target task."""
    from raytag.data.tasks import TaskSet
    from raytag.distributed.select import select_sources, verify_summary
    from raytag.distributed.session import ensure_ray

    run = RunDir(run_dir)
    run.pull(run.root, mirror=True)
    config = _resolve_config(run, None, set_)
    ensure_ray(config.ray, address)
    targets = target or list(config.select.targets) or [TaskSet.load(run.taskset).names[0]]
    for name in targets:
        result = select_sources(run, config, name, budget or config.select.budget, verify)
        run.push(run.select_json(name))
        typer.echo(f"{name}: add {', '.join(result['chosen'])}  ->  {run.location_of(run.select_json(name))}")
        if verify:
            typer.echo(f"  {verify_summary(result)}")


@app.command("config-help")
def config_help() -> None:
    """List every config field with its default and meaning."""
    for line in describe_fields(RaytagConfig):
        typer.echo(line)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from raytag.data.loaders import DataError

    try:
        app()
    except (ConfigError, DataError, RunDirError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
