"""`cldsgm sample`: a checkpoint or an exact-score oracle sampled into sharded, resumable, checksummed files."""

from __future__ import annotations

import os

import click

from cldsgm.cli import main
from cldsgm.cli._common import click_error, device_for, finish_ranks_and_mark, key_values, writable_dir

# sampler -> its own options (CLI name -> keyword of the sampler function)
_SAMPLER_OPTIONS = {
    "sscs": {"score_time": "score_time", "score_step": "score_step", "second_half": "second_half",
             "num_stab": "num_stab", "precision_sigma": "precision_sigma"},
    "conjugate": {"lam": "lam"},
    "ge_ode": {"precision_sigma": "precision_sigma"},
    "ge_sde": {"precision_sigma": "precision_sigma"},
    "euler_ode": {},
    "pc": {"snr": "snr", "n_corrector": "n_corrector"},
    "ode": {"rtol": "rtol", "atol": "atol", "ode_method": "method", "denoise_drift": "denoise_drift"},
    "em": {},
}


def sampler_options(sampler: str, given: dict) -> dict:
    """The sampler keywords from the CLI values that were given; an option of another sampler is an error."""
    allowed = _SAMPLER_OPTIONS[sampler]
    wrong = sorted(k for k, v in given.items() if v is not None and k not in allowed)
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise click.UsageError(f"{flags} do(es) not apply to sampler {sampler!r}")
    return {allowed[k]: v for k, v in given.items() if v is not None}


def source_options(f):
    """--run-dir / --checkpoint / --oracle (+ --sde, --sde-param for oracles) and --raw-weights."""
    for decorator in reversed([
        click.option("--run-dir", type=click.Path(file_okay=False), default=None,
                     help="A training run directory (its checkpoint.pt)."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="A checkpoint file."),
        click.option("--oracle", type=click.Choice(["diamond", "gaussian", "swissroll"]), default=None,
                     help="The exact score of a 2-D law instead of a network."),
        click.option("--sde", "sde_name", type=click.Choice(["cld", "psld", "vpsde"]), default=None,
                     help="Oracle only: the SDE (default cld). A checkpoint brings its own."),
        click.option("--sde-param", "sde_param", multiple=True, help="Oracle only: KEY=VALUE of the SDE."),
        click.option("--raw-weights", is_flag=True, help="Use the raw weights instead of the EMA."),
    ]):
        f = decorator(f)
    return f


def resolve_source_args(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights) -> dict:
    given = [name for name, value in (("--run-dir", run_dir), ("--checkpoint", checkpoint), ("--oracle", oracle))
             if value]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --run-dir, --checkpoint, --oracle")
    if oracle is None and (sde_name or sde_param):
        raise click.UsageError("--sde and --sde-param are for --oracle; a checkpoint brings its own SDE")
    if oracle is not None and raw_weights:
        raise click.UsageError("--raw-weights applies to checkpoints, not to --oracle")
    return {"checkpoint": checkpoint or run_dir, "oracle": oracle, "sde_name": sde_name or "cld",
            "sde_params": key_values(sde_param, "--sde-param"), "raw_weights": raw_weights}


def load_source(args: dict, *, precision: str = "fp32", device="cpu", net_batch: int = 256):
    from cldsgm.sampling import checkpoint_source, oracle_source

    if args["oracle"]:
        return oracle_source(args["oracle"], args["sde_name"], args["sde_params"])
    return checkpoint_source(args["checkpoint"], raw_weights=args["raw_weights"], precision=precision, device=device,
                             net_batch=net_batch)


@main.command("sample")
@source_options
@click.option("--sampler", required=True, type=click.Choice(list(_SAMPLER_OPTIONS)))
@click.option("--nfe", type=int, default=None, help="Fixed-step samplers: the NFE budget, denoising included.")
@click.option("--striding", type=click.Choice(["uniform", "quadratic"]), default="uniform", show_default=True)
@click.option("--t-min", type=float, default=1e-3, show_default=True, help="Sampling end time (forward).")
@click.option("--num-samples", "--n", "n", type=int, required=True,
              help="Size of the whole sample set (under torchrun write --num-samples: torchrun takes --n as its own).")
@click.option("--first", type=int, default=0, show_default=True, help="First index of this invocation's slice.")
@click.option("--count", type=int, default=None, help="Samples in this slice (default: to the end).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True, help="Samples integrated at once.")
@click.option("--net-batch", type=int, default=256, show_default=True,
              help="Rows per network call (padded): fixes the numerics, whatever --batch-size.")
@click.option("--shard-size", type=int, default=1000, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Autocast of the network only.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-denoise", is_flag=True, help="Skip the final noise-free denoising step.")
@click.option("--score-time", type=click.Choice(["start", "midpoint"]), default=None, help="SSCS.")
@click.option("--score-step", type=click.Choice(["euler", "exponential"]), default=None, help="SSCS.")
@click.option("--second-half", type=click.Choice(["exact", "reference"]), default=None, help="SSCS.")
@click.option("--num-stab", type=float, default=None, help="SSCS: half-step covariance jitter.")
@click.option("--precision-sigma", type=float, default=None,
              help="SSCS, ge_ode, ge_sde: sigma_d, the local data scale of the exponential / Gaussian-exact step "
                   "(0: point mass; SSCS is second order with sigma_d > 0).")
@click.option("--lam", type=float, default=None,
              help="conjugate: lambda of B_t = lambda I (0: the exponential integrator).")
@click.option("--snr", type=float, default=None, help="PC: corrector signal-to-noise ratio (0.16).")
@click.option("--n-corrector", type=int, default=None, help="PC: corrector steps per step (1).")
@click.option("--rtol", type=float, default=None, help="ODE (1e-5).")
@click.option("--atol", type=float, default=None, help="ODE (1e-5).")
@click.option("--ode-method", type=click.Choice(["scipy_rk45", "dopri5"]), default=None, help="ODE.")
@click.option("--denoise-drift", type=click.Choice(["sde", "pf"]), default=None,
              help="ODE: the last step t_min -> 0 with the reverse-SDE drift (sde, CLD-SGM) or the probability-flow "
                   "drift (pf, PSLD).")
@click.option("--done", "done_path", type=click.Path(dir_okay=False), default=None,
              help="Write this JSON summary once this invocation's slice is complete (a workflow's output).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def sample_command(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights, sampler, nfe, striding, t_min, n,
                   first, count, seed, batch_size, net_batch, shard_size, out_dir, precision, device, no_denoise,
                   score_time, score_step, second_half, num_stab, precision_sigma, lam, snr, n_corrector, rtol,
                   atol, ode_method, denoise_drift, done_path, progress):
    """Sample a set of n into DIR/shard_<first>-<last>.npz + manifest.json + grid.png; resumes; torchrun-aware.

    Image i of a run (seed) is the same bytes whatever --batch-size and however the set is split (--first/--count
    invocations, torchrun ranks). Re-running the command verifies finished shards and makes the rest.
    """
    source_args = resolve_source_args(run_dir, checkpoint, oracle, sde_name, sde_param, raw_weights)
    options = sampler_options(sampler, {"score_time": score_time, "score_step": score_step,
                                        "second_half": second_half, "num_stab": num_stab,
                                        "precision_sigma": precision_sigma, "lam": lam, "snr": snr,
                                        "n_corrector": n_corrector, "rtol": rtol, "atol": atol,
                                        "ode_method": ode_method, "denoise_drift": denoise_drift})
    if sampler == "ode" and nfe is not None:
        raise click.UsageError("the ODE sampler is adaptive: give --rtol/--atol, not --nfe")
    if sampler != "ode" and nfe is None:
        raise click.UsageError(f"sampler {sampler!r} needs --nfe")
    writable_dir(out_dir, "--out")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))

    from cldsgm.sampling import sample_to_dir
    from cldsgm.training.checkpoint import UnsafeCheckpointError  # noqa: F401 (a ValueError: caught below)

    try:
        torch_device = device_for(device, int(os.environ.get("LOCAL_RANK", "0")))
        source = load_source(source_args, precision=precision, device=torch_device, net_batch=net_batch)
        summary = sample_to_dir(source, out_dir, sampler=sampler, nfe=nfe, n=n, striding=striding, t_min=t_min,
                                seed=seed, first=first, count=count, batch_size=batch_size, shard_size=shard_size,
                                options=options, denoise=not no_denoise, rank=rank, world=world,
                                device=torch_device, precision=precision, net_batch=None if oracle else net_batch,
                                progress=progress and rank == 0)
        finish_ranks_and_mark(done_path, summary)
    except (ValueError, OSError) as err:
        raise click_error(err) from err
    state = "complete" if summary["complete"] else f"{summary['done']} of {summary['n']} done"
    click.echo(f"sampled {len(summary['made'])} shard(s), kept {summary['kept']} -> {out_dir} ({state})")
