"""Dataset preparation (raw source -> prepared .npz + manifest) and the torch Dataset that training reads."""

from cldsgm.data.dataset import PreparedDataset
from cldsgm.data.prepare import DATASETS, prepare
from cldsgm.data.prepared import load_prepared, prepared_paths, save_prepared

__all__ = ["DATASETS", "PreparedDataset", "load_prepared", "prepare", "prepared_paths", "save_prepared"]
