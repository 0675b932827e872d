"""Command-line interface: `cldsgm <command>`. Every workflow rule is a call into one of these commands."""

from __future__ import annotations

import click

from cldsgm import __version__


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from err


@click.group()
@click.version_option(__version__, prog_name="cldsgm")
def main() -> None:
    """cldsgm: reproduce and compare CLD, PSLD and VPSDE score-based generative models."""


@main.command()
@click.option("--sde", "sde_name", type=click.Choice(["cld", "psld", "vpsde"]), default="cld", show_default=True)
@click.option("--times", default="1,0.5,0.1,0.01,0.001,0.00001", show_default=True, help="Forward times t in [0, 1].")
@click.option("--numerical-eps", type=float, default=None, help="Override the SDE's numerical_eps (CLD/PSLD).")
def kernel(sde_name: str, times: str, numerical_eps: float | None) -> None:
    """Print the perturbation kernel (covariance and l_t) of an SDE at its paper defaults."""
    import torch

    from cldsgm.sde import build_sde

    params = {} if numerical_eps is None or sde_name == "vpsde" else {"numerical_eps": numerical_eps}
    sde = build_sde(sde_name, **params)
    t = torch.tensor(_floats(times, "--times"), dtype=torch.float64)
    try:
        if sde_name == "vpsde":
            click.echo(f"{'t':>10} {'mean':>12} {'var':>12} {'ell':>12}")
            for row in zip(t, sde.mean_coeff(t), sde.var(t), sde.ell(t), strict=True):
                click.echo(" ".join(f"{float(v):>12.6g}" for v in row))
            return
        hsm, ell_hsm, ell_dsm = sde.perturbation_cov(t, "hsm"), sde.ell(t, "hsm"), sde.ell(t, "dsm")
        click.echo(f"{'t':>10} {'Sxx (HSM)':>12} {'Sxv (HSM)':>12} {'Svv (HSM)':>12} {'ell HSM':>12} {'ell DSM':>12}")
        for i in range(len(t)):
            row = (t[i], hsm.xx[i], hsm.xv[i], hsm.vv[i], ell_hsm[i], ell_dsm[i])
            click.echo(" ".join(f"{float(v):>12.7g}" for v in row))
    except ValueError as err:
        raise click.UsageError(str(err)) from err


@main.command("sampler-bench")
@click.option("--sde", "sde_name", type=click.Choice(["cld", "psld", "vpsde"]), default="cld", show_default=True)
@click.option("--samplers", default="em,sscs", show_default=True,
              help="Comma-separated: em, sscs (our default variant), sscs-ref (the reference code's), pc, ode.")
@click.option("--nfe", "nfes", default="20,50,100", show_default=True, help="Comma-separated NFE budgets.")
@click.option("--striding", "stridings", default="uniform", show_default=True, help="uniform and/or quadratic.")
@click.option("--dataset", type=click.Choice(["diamond", "gaussian"]), default="diamond", show_default=True)
@click.option("--n-samples", type=int, default=5000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--t-min", type=float, default=1e-3, show_default=True, help="Sampling end time (forward).")
@click.option("--ode-tol", type=float, default=1e-5, show_default=True, help="rtol = atol of the ODE sampler.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write the table here.")
def sampler_bench_command(sde_name, samplers, nfes, stridings, dataset, n_samples, seed, t_min, ode_tol, csv_path):
    """Compare samplers on exact scores (no training): distance to the true data law per NFE budget."""
    from cldsgm.bench import sampler_bench
    from cldsgm.sde import build_sde
    from cldsgm.utils.io import atomic_path

    budgets = [int(v) for v in _floats(nfes, "--nfe")]
    if n_samples < 2:
        raise click.BadParameter("need at least 2 samples", param_hint="--n-samples")
    try:
        table = sampler_bench(build_sde(sde_name), sde_name, [s.strip() for s in samplers.split(",") if s.strip()],
                              budgets, [s.strip() for s in stridings.split(",") if s.strip()], n_samples=n_samples,
                              dataset=dataset, seed=seed, t_min=t_min, ode_tol=ode_tol)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    click.echo(table.drop(columns=["sde", "dataset", "n"]).to_string(
        index=False, float_format=lambda v: f"{v:.4g}"))
    if csv_path:
        with atomic_path(csv_path) as tmp:
            table.to_csv(tmp, index=False)
        click.echo(f"wrote {csv_path}")


def _click_error(err: Exception) -> click.ClickException:
    """One line for a failure: our own messages as they are; a system error (permissions, disk full, a file
    where a folder should be) as 'cannot write <file>: <reason>' instead of a traceback."""
    if isinstance(err, OSError) and err.errno is not None:
        where = f" {err.filename}" if err.filename else ""
        return click.ClickException(f"cannot write{where}: {err.strerror or err}")
    return click.ClickException(str(err))


def _writable_dir(path: str, flag: str) -> bool:
    """Create `path` (and parents) now, so that an unwritable location fails before any work is done.

    Returns whether it was created here (see _remove_if_empty).
    """
    import os
    from pathlib import Path

    created = not Path(path).exists()
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f"{flag} {path} cannot be created: {err.strerror or err}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise click.ClickException(f"{flag} {path} is not writable")
    return created


def _remove_if_empty(path: str) -> None:
    """Undo _writable_dir after a failure that wrote nothing: no empty run directory is left behind."""
    from pathlib import Path

    try:
        Path(path).rmdir()  # fails, as wanted, unless the directory is empty
    except OSError:
        pass


@main.command()
@click.option("--dataset", "name", required=True,
              type=click.Choice(["cifar10", "image_folder", "digits", "multimodal_swissroll", "diamond"]))
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="results/data", show_default=True)
@click.option("--source", type=click.Path(), default=None, help="CIFAR-10 folder/archive, or the image folder.")
@click.option("--download/--no-download", default=False, show_default=True, help="CIFAR-10 only: fetch if absent.")
@click.option("--resolution", type=int, default=None, help="image_folder: output side length in pixels.")
@click.option("--labels/--no-labels", default=False, show_default=True, help="image_folder: sub-folder classes.")
@click.option("--test-fraction", type=float, default=None, help="digits (0.2) / image_folder (0): held-out part.")
@click.option("--n", type=int, default=None, help="Toy data: number of points.")
@click.option("--seed", type=int, default=0, show_default=True)
def prepare(name, split, out_dir, source, download, resolution, labels, test_fraction, n, seed):
    """Turn a raw source into a prepared dataset: <out>/<dataset>_<split>.npz and .json (manifest)."""
    from cldsgm.data.prepare import check_prepare_args

    try:  # argument mistakes are reported before torch is imported
        check_prepare_args(name, split, source=source, resolution=resolution, test_fraction=test_fraction, n=n)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    created = _writable_dir(out_dir, "--out")
    from cldsgm.data import prepare as prepare_dataset

    try:
        manifest = prepare_dataset(name, split, out_dir, source=source, download=download, resolution=resolution,
                                   labels=labels, test_fraction=test_fraction, n=n, seed=seed)
    except (ValueError, OSError) as err:  # FileNotFoundError is an OSError with its own clear message
        if created:
            _remove_if_empty(out_dir)
        raise _click_error(err) from err
    click.echo(f"prepared {manifest['name']}/{manifest['split']}: {manifest['count']} x {manifest['shape']} "
               f"{manifest['dtype']} -> {out_dir}/{manifest['file']} (sha256 {manifest['sha256'][:12]})")


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


def _sigterm_as_interrupt() -> None:
    """SIGTERM (Snakemake, SLURM, a user's kill) unwinds like Ctrl-C: the run is closed KILLED, files stay whole."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


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
    created = _writable_dir(run_dir, "--run-dir")
    _sigterm_as_interrupt()

    import torch.distributed as dist

    from cldsgm.training import train

    try:
        result = train(config, run_dir, progress=progress, allow_config_change=allow_config_change)
    except (ValueError, FileNotFoundError, FloatingPointError, OSError) as err:  # UnsafeCheckpointError too
        if created:
            _remove_if_empty(run_dir)
        raise _click_error(err) from err
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
