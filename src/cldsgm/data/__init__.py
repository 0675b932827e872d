"""Dataset preparation: raw source -> prepared .npz + manifest (no torch at import: the CLI checks arguments and
manifests before torch is loaded)."""

from cldsgm.data.prepare import prepare
from cldsgm.data.prepared import load_prepared, prepared_paths, save_prepared

__all__ = ["load_prepared", "prepare", "prepared_paths", "save_prepared"]

