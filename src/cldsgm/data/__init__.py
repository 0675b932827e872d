"""Dataset preparation (raw source -> prepared .npz + manifest) and the torch Dataset that training reads.

Only `PreparedDataset` needs torch; it is imported on first use, so that the CLI can check arguments and
manifests without importing torch.
"""

from importlib import import_module

from cldsgm.data.prepare import DATASETS, prepare
from cldsgm.data.prepared import load_prepared, prepared_paths, save_prepared

__all__ = ["DATASETS", "PreparedDataset", "load_prepared", "prepare", "prepared_paths", "save_prepared"]


def __getattr__(name: str):
    if name == "PreparedDataset":
        return import_module("cldsgm.data.dataset").PreparedDataset
    raise AttributeError(f"module 'cldsgm.data' has no attribute {name!r}")
