"""Command-line interface: `cldsgm <command>`. Every workflow rule is a call into one of these commands.

One module per verb group: data (prepare), train (train, track), imports (import-checkpoint), sample, evaluate
(fid-stats, fid, digits-classifier, fd-digits, sample-distance, nll), report, bench (kernel, sampler-bench) and
catalog. Each verb is a thin click command that checks its arguments (before importing torch where it can), calls
the library and prints one line; names and choices come from cldsgm.catalog.
"""

from __future__ import annotations

import click

from cldsgm import __version__


@click.group()
@click.version_option(__version__, prog_name="cldsgm")
def main() -> None:
    """cldsgm: reproduce and compare CLD, PSLD and VPSDE score-based generative models."""


from cldsgm.cli import bench, catalog, data, evaluate, imports, properties, report, sample, train  # noqa: E402, F401, I001
