"""`prepare`: one prepared dataset per (name, split) from its raw source."""

from __future__ import annotations

from cldsgm import catalog
from cldsgm.data.prepared import save_prepared

__all__ = ["check_prepare_args", "prepare"]


def check_prepare_args(name: str, split: str, *, source=None, resolution=None, test_fraction=None, n=None) -> None:
    """The argument checks of `prepare` that need no data (and no torch): ValueError naming the flag."""
    spec = catalog.dataset(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec.needs_source and source is None:
        what = ("a folder holding cifar-10-python.tar.gz or cifar-10-batches-py/" if name == "cifar10"
                else "the folder of images")
        raise ValueError(f"dataset {name!r} needs --source PATH ({what})")
    if name == "image_folder" and resolution is None:
        raise ValueError("dataset 'image_folder' needs --resolution N (the output side length in pixels)")
    if spec.generator is not None and n is None:
        raise ValueError(f"toy dataset {name!r} needs --n N (the number of points)")
    if spec.test_fraction is not None and split == "test":
        fraction = spec.test_fraction if test_fraction is None else test_fraction
        if fraction <= 0:
            raise ValueError(f"the test split of {name!r} would be empty with --test-fraction {fraction}; "
                             "pass --test-fraction > 0 (e.g. 0.2)")


def prepare(name: str, split: str, out_dir, *, source=None, download: bool = False, resolution: int | None = None,
            labels: bool = False, test_fraction: float | None = None, n: int | None = None, seed: int = 0,
            cifar_class=None) -> dict:
    """Read `name` for `split` and write <out_dir>/<name>_<split>.npz + .json atomically; return the manifest.

    cifar10: source (folder or archive), download. image_folder: source, resolution, labels, test_fraction.
    digits: test_fraction (0.2), seed. multimodal_swissroll / diamond: n, seed.
    """
    check_prepare_args(name, split, source=source, resolution=resolution, test_fraction=test_fraction, n=n)
    spec = catalog.dataset(name)
    options = {"source": source, "download": download, "resolution": resolution, "labels": labels, "n": n,
               "test_fraction": spec.test_fraction if test_fraction is None else test_fraction, "seed": seed,
               "cifar_class": cifar_class}
    data, targets, params, origin = catalog.load(spec.reader)(name, split, options)
    return save_prepared(out_dir, name, split, data, kind=spec.kind, source=origin, labels=targets, params=params)
