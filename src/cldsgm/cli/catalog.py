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


@main.command("claims")
@click.option("--study", "study_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Also say which of them this study decides, and what it lacks for the others.")
def claims_command(study_path):
    """List the papers' claims (cldsgm.claims) a study can decide: id, paper, statement, the paper's figure and what
    each side selects; with --study, which comparisons that study makes."""
    from cldsgm import claims

    for claim in claims.CLAIMS.values():
        click.echo(f"{claim.id:<24} [{claim.paper}] {claim.statement}")
        click.echo(f"{'':<26}{claims.describe(claim)}; metric {claim.metric}; paper: {claim.figure}")
    if study_path is None:
        return
    import yaml

    from cldsgm.study import StudyError, load_study, study_claims

    try:
        study = load_study(yaml.safe_load(open(study_path)), study_path)
    except StudyError as err:
        raise click.ClickException(str(err)) from None
    decided, lacking = study_claims(study)
    click.echo(f"\n{study_path} decides {len(decided)} comparisons:")
    for inst in decided:
        click.echo(f"  {inst.claim.id:<24} {inst.data}: {inst.setting}")
    for claim, why in lacking:
        click.echo(f"  {claim.id:<24} not decided: {why}")
