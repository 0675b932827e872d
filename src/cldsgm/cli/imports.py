"""`cldsgm import-checkpoint`: the authors' released weights as a run directory of ours (no training needed)."""

from __future__ import annotations

import click

from cldsgm import catalog
from cldsgm.cli import main
from cldsgm.cli._common import catalog_choice, click_error, key_values, remove_if_empty, writable_dir
from cldsgm.cli.train import dotted_overrides

# a PSLD file stores no SDE hyperparameters, and the released SOTA file's name disagrees with the training README
PSLD_REQUIRED = ("Gamma", "nu")


@main.command("import-checkpoint")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=catalog_choice("checkpoint_formats"), required=True,
              help="; ".join(f"{name}: {spec.help}" for name, spec in catalog.CHECKPOINT_FORMATS.items()) + ".")
@click.option("--out", "run_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory to write (checkpoint.pt, config.yaml), usable by sample / fid / nll.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Training config giving SDE, loss and network [params/train/cifar10_cld.yaml or "
                   "params/train/cifar10_psld.yaml].")
@click.option("--sde-param", "sde_params", multiple=True, metavar="NAME=VALUE",
              help="SDE parameter, e.g. Gamma=0.02 nu=4.02 (required for PSLD files: they do not record them).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a config value by its dotted key, e.g. model.options={nf: 16}.")
@click.option("--done", "done_path", type=click.Path(dir_okay=False), default=None,
              help="Write this JSON summary when the import is complete (a workflow's output).")
def import_checkpoint_command(file, fmt, run_dir, config_path, sde_params, settings, done_path):
    """Convert a released CLD-SGM or PSLD checkpoint (EMA and raw weights) into RUN_DIR/checkpoint.pt."""
    from pathlib import Path

    from cldsgm.config import ConfigError, load_config

    config_path = config_path or catalog.CHECKPOINT_FORMATS[fmt].config
    if not Path(config_path).is_file():
        raise click.ClickException(f"config {config_path} not found; pass --config (a training YAML giving the "
                                   "SDE, loss and network of the file)")
    params = {k: float(v) for k, v in key_values(sde_params, "--sde-param").items()}
    if fmt == "psld":
        missing = [name for name in PSLD_REQUIRED if name not in params]
        if missing:
            raise click.ClickException(
                f"a PSLD file does not record its SDE: pass {' '.join(f'--sde-param {m}=...' for m in missing)} "
                "(the released CIFAR-10 SOTA file is named for Gamma=0.02 nu=4.02; the training README says "
                "0.01 / 4.01)")
    overrides = dotted_overrides(settings)
    if params:
        overrides.setdefault("sde", {}).setdefault("params", {}).update(params)
    try:
        config = load_config(config_path, overrides)
    except ConfigError as err:
        raise click.ClickException(str(err)) from err
    if not Path(file).is_file():
        raise click.ClickException(f"checkpoint {file} not found")
    created = writable_dir(run_dir, "--out")
    try:
        from cldsgm.training.imports import import_reference_checkpoint

        summary = import_reference_checkpoint(file, fmt, config, run_dir)
        if done_path:
            from cldsgm.utils.io import atomic_write_json

            atomic_write_json(done_path, summary)
    except (ValueError, FileNotFoundError, OSError) as err:  # UnsafeCheckpointError is a ValueError
        if created:
            remove_if_empty(run_dir)
        raise click_error(err) from err
    click.echo(f"imported {summary['format']} {file} (step {summary['step']}, {summary['tensors']} tensors, "
               f"sha256 {summary['sha256'][:12]}) -> {run_dir}/checkpoint.pt")
