"""`cldsgm catalog`: the names a study file and the CLI accept (cldsgm.catalog), printed (no torch)."""

from __future__ import annotations

import click

from cldsgm.cli import main


@main.command("catalog")
def catalog_command():
    """List the samplers (with their options, order, NFE per step and SDEs), datasets, SDEs and other names."""
    from cldsgm import catalog

    click.echo("samplers:")
    for spec in catalog.SAMPLERS.values():
        per_step = "adaptive" if spec.adaptive else ("1 + n_corrector" if callable(spec.nfe_per_step)
                                                     else str(spec.nfe_per_step))
        click.echo(f"  {spec.name:<10} order {spec.order if spec.order is not None else '-'}, NFE per step "
                   f"{per_step}, for {', '.join(spec.sdes)}: {spec.description}")
        for option in spec.options:
            kind = "|".join(option.choices) if option.choices else option.type.__name__
            click.echo(f"      {option.name} ({kind}, default {option.default}; {option.cli_flag}): {option.help}")
    click.echo("datasets:")
    for spec in catalog.DATASETS.values():
        click.echo(f"  {spec.name:<22} {spec.kind:<6} scored by {spec.evaluation} ({', '.join(spec.metrics)}); NLL in "
                   f"{spec.nll_metric}" + (f"; exact-score law {spec.oracle}" if spec.oracle else ""))
    click.echo("sdes:")
    for spec in catalog.SDES.values():
        click.echo(f"  {spec.name:<6} {'phase space' if spec.phase_space else 'data space'}: {spec.description}")
    for name, values in (("stridings", catalog.STRIDINGS), ("precisions", catalog.PRECISIONS),
                         ("ode methods", catalog.ODE_METHODS), ("likelihood probes", catalog.PROBES),
                         ("oracles", tuple(catalog.ORACLES)), ("fid modes", catalog.FID_MODES)):
        click.echo(f"{name}: {', '.join(values)}")
