"""`cldsgm report`: reports/<study>/ from a study's records (no torch)."""

from __future__ import annotations

import click

from cldsgm.cli import main
from cldsgm.cli._common import click_error


@main.command("report")
@click.option("--study", "study_path", type=click.Path(dir_okay=False, exists=True), required=True)
@click.option("--results", type=click.Path(file_okay=False, exists=True), required=True, help="results/<study>")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="reports/<study>")
def report_command(study_path, results, out_dir):
    """Build index.html (self-contained), report.md, metrics.json and CSVs from the study's records."""
    from cldsgm.records import RecordError
    from cldsgm.report import build_report

    try:
        metrics = build_report(study_path, results, out_dir)
    except (RecordError, ValueError, OSError) as err:
        raise click_error(err) from err
    verdicts = [c["verdict"] for c in metrics["claims"].values()]
    click.echo(f"report of {metrics['study']}: {len(metrics['quality'])} quality values, {metrics['figures']} figures, "
               f"{len(verdicts)} claim comparisons ({verdicts.count('holds')} hold) -> {out_dir}/index.html")
