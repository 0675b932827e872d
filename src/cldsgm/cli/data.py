"""`cldsgm prepare`: raw sources to prepared datasets."""

from __future__ import annotations

import click

from cldsgm.cli import main
from cldsgm.cli._common import catalog_choice, click_error, remove_if_empty, writable_dir


@main.command()
@click.option("--dataset", "name", required=True,
              type=catalog_choice("datasets"))
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
    created = writable_dir(out_dir, "--out")
    from cldsgm.data import prepare as prepare_dataset

    try:
        manifest = prepare_dataset(name, split, out_dir, source=source, download=download, resolution=resolution,
                                   labels=labels, test_fraction=test_fraction, n=n, seed=seed)
    except (ValueError, OSError) as err:  # FileNotFoundError is an OSError with its own clear message
        if created:
            remove_if_empty(out_dir)
        raise click_error(err) from err
    click.echo(f"prepared {manifest['name']}/{manifest['split']}: {manifest['count']} x {manifest['shape']} "
               f"{manifest['dtype']} -> {out_dir}/{manifest['file']} (sha256 {manifest['sha256'][:12]})")
