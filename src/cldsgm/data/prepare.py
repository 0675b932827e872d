"""`prepare`: one prepared dataset per (name, split) from its raw source."""

from __future__ import annotations

from cldsgm.data import sources
from cldsgm.data.prepared import save_prepared

__all__ = ["DATASETS", "prepare"]

DATASETS = ("cifar10", "image_folder", "digits", *sources.TOY_DATASETS)


def prepare(name: str, split: str, out_dir, *, source=None, download: bool = False, resolution: int | None = None,
            labels: bool = False, test_fraction: float | None = None, n: int | None = None, seed: int = 0,
            cifar_class=None) -> dict:
    """Read `name` for `split` and write <out_dir>/<name>_<split>.npz + .json atomically; return the manifest.

    cifar10: source (folder or archive), download. image_folder: source, resolution, labels, test_fraction.
    digits: test_fraction (0.2), seed. multimodal_swissroll / diamond: n, seed.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {list(DATASETS)}")
    if name in ("cifar10", "image_folder") and source is None:
        raise ValueError(f"dataset {name!r} needs a source path")
    if name == "cifar10":
        extra = {} if cifar_class is None else {"cifar_class": cifar_class}
        data, targets, params = sources.cifar10(source, split, download=download, **extra)
        kind, origin = "image", f"cifar10:{source}"
    elif name == "image_folder":
        if resolution is None:
            raise ValueError("dataset 'image_folder' needs a resolution")
        data, targets, params = sources.image_folder(source, split, resolution=resolution, labels=labels,
                                                     test_fraction=test_fraction or 0.0, seed=seed)
        kind, origin = "image", f"image_folder:{source}"
    elif name == "digits":
        data, targets, params = sources.digits(split, test_fraction=0.2 if test_fraction is None else test_fraction,
                                               seed=seed)
        kind, origin = "image", "sklearn.datasets.load_digits"
    else:
        if n is None:
            raise ValueError(f"toy dataset {name!r} needs n (the number of points)")
        data, targets, params = sources.toy(name, split, n=n, seed=seed)
        kind, origin = "points", f"toy:{name}"
    return save_prepared(out_dir, name, split, data, kind=kind, source=origin, labels=targets, params=params)
