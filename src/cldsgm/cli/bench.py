"""Verbs about the maths itself: the kernel table and the sampler benchmark on exact scores."""

from __future__ import annotations

import click

from cldsgm.cli import main
from cldsgm.cli._common import catalog_choice, floats


@main.command()
@click.option("--sde", "sde_name", type=catalog_choice("sdes"), default="cld", show_default=True)
@click.option("--times", default="1,0.5,0.1,0.01,0.001,0.00001", show_default=True, help="Forward times t in [0, 1].")
@click.option("--numerical-eps", type=float, default=None, help="Override the SDE's numerical_eps (CLD/PSLD).")
def kernel(sde_name: str, times: str, numerical_eps: float | None) -> None:
    """Print the perturbation kernel (covariance and l_t) of an SDE at its paper defaults."""
    import torch

    from cldsgm.sde import build_sde

    params = {} if numerical_eps is None or sde_name == "vpsde" else {"numerical_eps": numerical_eps}
    sde = build_sde(sde_name, **params)
    t = torch.tensor(floats(times, "--times"), dtype=torch.float64)
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
@click.option("--sde", "sde_name", type=catalog_choice("sdes"), default="cld", show_default=True)
@click.option("--samplers", default="em,sscs", show_default=True,
              help="Comma-separated: any sampler of the catalog (sscs is our default SSCS), sscs-ref (the reference "
                   "code's), sscs-fix (sigma_d 0.04); options inline, e.g. conjugate:order=3.")
@click.option("--nfe", "nfes", default="20,50,100", show_default=True, help="Comma-separated NFE budgets.")
@click.option("--striding", "stridings", default="uniform", show_default=True, help="uniform and/or quadratic.")
@click.option("--dataset", type=catalog_choice("oracles"), default="diamond", show_default=True,
              help="The exact-score law sampled and compared against.")
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

    budgets = [int(v) for v in floats(nfes, "--nfe")]
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
