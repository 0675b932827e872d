"""`cldsgm train` and `cldsgm track`: training runs and their MLflow records."""

from __future__ import annotations

import os

import click

from cldsgm.cli import main
from cldsgm.cli._common import click_error, pairs, remove_if_empty, sigterm_as_interrupt, writable_dir
from cldsgm.utils.launch import launch


def dotted_overrides(settings) -> dict:
    """('train.steps=500', 'model.options={nf: 16}') -> nested dict, values parsed as YAML."""
    import yaml

    from cldsgm.config import nest

    dotted = {}
    for key, value in pairs(settings, "--set"):
        try:
            dotted[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise click.BadParameter(f"the value of {key} is not valid YAML ({str(err).splitlines()[0]})",
                                     param_hint="--set") from err
    return nest(dotted)


def read_parent(path) -> dict:
    """The parent-run file written by `cldsgm track --init --parent-out` ({uri, experiment, run_id})."""
    import json
    from pathlib import Path

    try:
        from cldsgm.tracking import tracking_uri
        from cldsgm.tracking.store import absolute_uri

        parent = json.loads(Path(path).read_text())
        # $MLFLOW_TRACKING_URI wins over the store recorded at the study's start (e.g. it was down then)
        uri = tracking_uri(parent["uri"])
        return {"uri": uri, "experiment": parent["experiment"],
                "run_id": parent.get("run_id") if uri == absolute_uri(parent["uri"]) else None}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise click.ClickException(f"--parent-run {path} is not a parent-run file of `cldsgm track --init` "
                                   f"({err})") from err


def _resolved_study(study_file) -> dict | None:
    """The study of `study_file` as the workflow resolved it (defaults filled in), or None without a file."""
    if study_file is None:
        return None
    import yaml

    from cldsgm.report import read_study
    from cldsgm.study import StudyError

    try:
        return read_study(study_file)
    except (StudyError, yaml.YAMLError) as err:
        raise click.ClickException(f"--study {study_file}: {err}") from None


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


def _training_options(command):
    """The options of `train` and `train-classifier` (one trainer: the same checkpoints, resume and tracking)."""
    for option in reversed(_TRAINING_OPTIONS):
        command = option(command)
    return command


_TRAINING_OPTIONS = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="Training YAML."),
    click.option("--run-dir", type=click.Path(file_okay=False), required=True, help="Checkpoints, loss.csv, config."),
    click.option("--steps", type=int, default=None, help="Override train.steps."),
    click.option("--no-tracking", is_flag=True, help="Do not log to MLflow."),
    click.option("--allow-config-change", is_flag=True,
        help="Resume even though the config changed more than steps / logging / device; the earlier config "
            "is kept as config.until-step-<N>.yaml."),
    click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
        help="Override a config value by its dotted key (the value is read as YAML), e.g. train.steps=500."),
    click.option("--parent-run", type=click.Path(dir_okay=False), default=None,
        help="JSON from `cldsgm track --init --parent-out`: log as a child run of the study's parent run."),
    click.option("--done", "done_path", type=click.Path(dir_okay=False), default=None,
        help="Write this JSON summary once training has reached train.steps (a workflow's output)."),
    click.option("--progress/--no-progress", default=True, show_default=True,
        help="a bar on a terminal; in a log file a line at least every $CLDSGM_PROGRESS_EVERY seconds (30)")
]


@main.command("train")
@_training_options
def train_command(config_path, run_dir, steps, no_tracking, allow_config_change, settings, parent_run, done_path,
                  progress):
    """Train a score model (resumes from <run-dir>/checkpoint.pt if present). Under torchrun: DDP."""
    from cldsgm.config import ConfigError, load_config

    overrides = dotted_overrides(settings)
    if steps is not None:
        overrides.setdefault("train", {})["steps"] = steps
    if no_tracking:  # only `enabled`: the run's other tracking settings (run_name, ...) stay in its config
        overrides.setdefault("tracking", {})["enabled"] = False
    try:  # config, data path and run directory are checked before torch is imported: a typo costs < 1 s
        config = load_config(config_path, overrides)
    except ConfigError as err:
        raise click.ClickException(str(err)) from err
    _check_data_path(config)
    created = writable_dir(run_dir, "--run-dir")
    sigterm_as_interrupt()

    import torch.distributed as dist

    from cldsgm.training import train

    parent = read_parent(parent_run) if parent_run and not no_tracking else None
    try:
        result = train(config, run_dir, progress=progress, allow_config_change=allow_config_change,
                       tracking_parent=parent)
        if done_path and launch().main:
            from cldsgm.utils.io import atomic_write_json

            atomic_write_json(done_path, {"run_dir": str(run_dir), "step": result.step,
                                          "final_loss": result.final_loss, "ran": result.ran,
                                          "n_parameters": result.n_parameters,
                                          "train_seconds": round(result.train_seconds, 3),
                                          # the ranks that trained it (torchrun), for the record and the SLURM tests
                                          "world_size": launch().world})
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


@main.command("train-classifier")
@_training_options
def train_classifier_command(**options):
    """Train a noise-conditioned classifier of the whole state u_t (x and v) for guided sampling: the config's
    task is set to classifier, its model one of the classifier networks (toy_classifier, ncsnpp_digits_classifier),
    its data labelled. Resumes, checkpoints and logs as `cldsgm train` does."""
    options["settings"] = (*options["settings"], "task=classifier")
    train_command.callback(**options)



@main.command("track")
@click.option("--init", "init", is_flag=True, help="Create (and migrate) the store and the experiment, then exit.")
@click.option("--run-dir", "run_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Log this training run's records (config.yaml, loss.csv) to the store; only what is missing.")
@click.option("--experiment", default=None, help="--init: the experiment to create.")
@click.option("--parent-out", type=click.Path(dir_okay=False), default=None,
              help="--init: also open the study's parent run (once) and write {uri, experiment, run_id} here.")
@click.option("--parent-run", type=click.Path(dir_okay=False), default=None,
              help="A study's parent-run file: runs and records are logged as its children, then it is closed.")
@click.option("--records", "records_dir", type=click.Path(file_okay=False), default=None,
              help="With --parent-run: log every evaluation record under this folder (metrics at step = NFE).")
@click.option("--artifacts", "artifacts_dir", type=click.Path(file_okay=False), default=None,
              help="With --parent-run: log this folder (the report) as artifacts of the parent run.")
@click.option("--study", "study_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="With --parent-run: the study file, logged with the resolved study as the parent run's "
                   "artifacts (study/) and params.")
@click.option("--uri", default=None, help="The store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option("--soft", is_flag=True,
              help="A store that fails is a warning, not an error: exit 0 with the files written (for workflows).")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), default=None,
              help="Write what was logged (or the error) to this JSON file.")
def track_command(init, run_dirs, experiment, parent_out, parent_run, records_dir, artifacts_dir, study_file, uri,
                  soft, summary_path):
    """Set up the MLflow store once before parallel jobs, or (re)log on-disk records into it."""
    from cldsgm.tracking import (
        TrackingError,
        finish_parent,
        init_store,
        log_records,
        open_parent_run,
        relog_run_dir,
        tracking_uri,
    )
    from cldsgm.utils.io import atomic_write_json, portable_uri, project_path

    if not (init or run_dirs or parent_run):
        raise click.UsageError("give --init, --run-dir DIR and/or --parent-run FILE")
    if parent_out and not (init and experiment):
        raise click.UsageError("--parent-out needs --init and --experiment")
    summary = {"store": tracking_uri(uri), "runs": {}, "error": None}
    parent = read_parent(parent_run) if parent_run else None
    study = _resolved_study(study_file)  # a bad study file is refused before anything is logged
    try:
        if init:
            store, exp_id = init_store(uri, experiment)
            click.echo(f"store {store} ready" + (f", experiment {experiment!r} (id {exp_id})" if experiment else ""))
            if parent_out:
                parent = open_parent_run(store, experiment, parent_out)
                click.echo(f"parent run {parent['run_id']} -> {parent_out}")
        if parent is not None and not parent.get("run_id"):  # the store was down when the study started
            parent = open_parent_run(uri or parent["uri"], parent["experiment"], None)
        for run_dir in run_dirs:
            done = relog_run_dir(run_dir, uri or (parent or {}).get("uri"),
                                 parent_run_id=(parent or {}).get("run_id"),
                                 experiment=(parent or {}).get("experiment"))
            summary["runs"][project_path(run_dir)] = done
            click.echo(f"{run_dir}: {done['logged']} steps logged to run {done['run_id']} in {done['uri']} "
                       f"({done['status']})")
        if parent_run and records_dir:
            summary["records"] = log_records(records_dir, parent)
            click.echo(f"records: {summary['records']['logged']} metrics logged in {summary['records']['runs']} runs")
        if parent_run:
            finish_parent(parent, artifacts_dir, study, study_file)
    except (TrackingError, FileNotFoundError) as err:
        if not soft:
            raise click.ClickException(str(err)) from err
        summary["error"] = str(err)
        click.echo(f"warning: {err}. The records stay on disk: run this command again once the store is back.",
                   err=True)
        if parent_out and not os.path.isfile(parent_out):
            atomic_write_json(parent_out, {"uri": portable_uri(summary["store"]), "experiment": experiment,
                                           "run_id": None, "error": str(err)})
    if summary_path:
        atomic_write_json(summary_path, {**summary, "store": portable_uri(summary["store"]),
                                         "runs": {k: {**v, "uri": portable_uri(v.get("uri"))}
                                                  for k, v in summary["runs"].items()}})
