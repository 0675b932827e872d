"""`cldsgm train` and `cldsgm track`: training runs and their MLflow records."""

from __future__ import annotations

import click

from cldsgm.cli import main
from cldsgm.cli._common import click_error, remove_if_empty, sigterm_as_interrupt, writable_dir


def _check_data_path(config: dict) -> None:
    """The prepared dataset a config names exists and its manifest reads (no torch needed)."""
    from pathlib import Path

    from cldsgm.data.prepared import read_manifest

    path = Path(config["data"]["path"])
    for needed in (path.with_suffix(".npz"), path.with_suffix(".json")):
        if not needed.is_file():
            raise click.ClickException(f"prepared dataset file {needed} (data.path) not found; "
                                       "run `cldsgm prepare` first")
    try:
        read_manifest(path.with_suffix(".json"))
    except ValueError as err:
        raise click.ClickException(str(err)) from err


@main.command("train")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="Training YAML.")
@click.option("--run-dir", type=click.Path(file_okay=False), required=True, help="Checkpoints, loss.csv, config.")
@click.option("--steps", type=int, default=None, help="Override train.steps.")
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow.")
@click.option("--allow-config-change", is_flag=True,
              help="Resume even though the config changed more than steps / logging / device; the earlier config "
                   "is kept as config.until-step-<N>.yaml.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train_command(config_path, run_dir, steps, no_tracking, allow_config_change, progress):
    """Train a score model (resumes from <run-dir>/checkpoint.pt if present). Under torchrun: DDP."""
    from cldsgm.config import ConfigError, load_config

    overrides = {}
    if steps is not None:
        overrides["train"] = {"steps": steps}
    if no_tracking:
        overrides["tracking"] = {"enabled": False}
    try:  # config, data path and run directory are checked before torch is imported: a typo costs < 1 s
        config = load_config(config_path, overrides)
    except ConfigError as err:
        raise click.ClickException(str(err)) from err
    _check_data_path(config)
    created = writable_dir(run_dir, "--run-dir")
    sigterm_as_interrupt()

    import torch.distributed as dist

    from cldsgm.training import train

    try:
        result = train(config, run_dir, progress=progress, allow_config_change=allow_config_change)
    except (ValueError, FileNotFoundError, FloatingPointError, OSError) as err:  # UnsafeCheckpointError too
        if created:
            remove_if_empty(run_dir)
        raise click_error(err) from err
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    if result.ran == 0:
        click.echo(f"nothing to do: {run_dir} already finished {result.step} steps, final loss "
                   f"{result.final_loss:.4g}")
    else:
        click.echo(f"trained {result.step} steps, final loss {result.final_loss:.4g}, run dir {run_dir}")



@main.command("track")
@click.option("--init", "init", is_flag=True, help="Create (and migrate) the store and the experiment, then exit.")
@click.option("--run-dir", "run_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Log this training run's records (config.yaml, loss.csv) to the store; only what is missing.")
@click.option("--experiment", default=None, help="--init: the experiment to create.")
@click.option("--uri", default=None, help="The store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
def track_command(init, run_dirs, experiment, uri):
    """Set up the MLflow store once before parallel jobs, or (re)log on-disk records into it."""
    from cldsgm.tracking import TrackingError, init_store, relog_run_dir

    if not init and not run_dirs:
        raise click.UsageError("give --init and/or --run-dir DIR")
    try:
        if init:
            store, exp_id = init_store(uri, experiment)
            click.echo(f"store {store} ready" + (f", experiment {experiment!r} (id {exp_id})" if experiment else ""))
        for run_dir in run_dirs:
            done = relog_run_dir(run_dir, uri)
            click.echo(f"{run_dir}: {done['logged']} steps logged to run {done['run_id']} in {done['uri']} "
                       f"({done['status']})")
    except (TrackingError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
