"""Prepared datasets: one .npz array file plus a JSON manifest, written atomically and checksummed.

Training and evaluation read only prepared datasets. The manifest records what the array is (name, split,
kind, per-sample shape, count, source, parameters) and the sha256 of the array's bytes, shape and dtype,
which `load_prepared` checks, so a modified or truncated file is an error, not a silent change of data.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from cldsgm import __version__
from cldsgm.utils.io import atomic_path, atomic_write_json

__all__ = ["array_sha256", "load_prepared", "prepared_paths", "random_subset", "read_manifest", "save_prepared",
           "scale_images"]


def scale_images(images):
    """uint8 pixel values k (a torch tensor) -> float32 2 k / 255 - 1 in [-1, 1] (the references' centring)."""
    return images.float() * (2.0 / 255.0) - 1.0


def random_subset(items: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n of the items drawn without replacement by `seed`, in their split order: a split need not be shuffled (the
    digits' are in the order of their writers: the first 200 training images are at FD-digits 36.8 from the
    held-out split, random 200 at 12.3 +- 2.9)."""
    return items[np.sort(np.random.default_rng(seed).permutation(len(items))[:n])]


def array_sha256(array: np.ndarray) -> str:
    """sha256 over dtype, shape and the C-ordered bytes."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def prepared_paths(out_dir: str | Path, name: str, split: str) -> tuple[Path, Path]:
    """(<out_dir>/<name>_<split>.npz, <out_dir>/<name>_<split>.json)."""
    stem = Path(out_dir) / f"{name}_{split}"
    return stem.with_suffix(".npz"), stem.with_suffix(".json")


def save_prepared(out_dir, name: str, split: str, data: np.ndarray, *, kind: str, source: str,
                  labels: np.ndarray | None = None, params: dict | None = None) -> dict:
    """Write data (uint8 [N, C, H, W] images or float32 [N, d] points) and its manifest; return the manifest."""
    if kind == "image" and (data.dtype != np.uint8 or data.ndim != 4):
        raise ValueError(f"images must be uint8 [N, C, H, W], got {data.dtype} {data.shape}")
    if kind == "points" and (data.dtype != np.float32 or data.ndim != 2):
        raise ValueError(f"points must be float32 [N, d], got {data.dtype} {data.shape}")
    if len(data) == 0:
        raise ValueError(f"refusing to write an empty dataset {name}/{split} (0 samples)")
    if labels is not None and labels.shape != (len(data),):
        raise ValueError(f"labels must have shape ({len(data)},), got {labels.shape}")
    array_path, manifest_path = prepared_paths(out_dir, name, split)
    arrays = {"data": data} if labels is None else {"data": data, "labels": labels.astype(np.int64)}
    with atomic_path(array_path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    manifest = {"name": name, "split": split, "kind": kind, "shape": list(data.shape[1:]), "count": int(len(data)),
                "dtype": str(data.dtype), "source": source, "sha256": array_sha256(data),
                "labels": labels is not None, "params": params or {}, "file": array_path.name,
                "cldsgm_version": __version__}
    atomic_write_json(manifest_path, manifest)
    return manifest


_MANIFEST_KEYS = {"kind": str, "shape": list, "count": int, "sha256": str}


def read_manifest(path: str | Path) -> dict:
    """The JSON manifest of a prepared dataset, checked for the keys that loading relies on.

    Raises ValueError naming the file for unreadable JSON or a missing / mistyped key.
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"manifest {path} is not valid JSON ({err}); prepare the dataset again") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest {path} must hold a JSON object; prepare the dataset again")
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            problem = "lacks" if key not in manifest else "has a malformed"
            raise ValueError(f"manifest {path} {problem} key {key!r} (expected {kind.__name__}); "
                             "prepare the dataset again")
    return manifest


def load_prepared(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(data, labels or None, manifest) of a prepared dataset, given its .npz or .json path.

    Raises FileNotFoundError (missing file) or ValueError (unreadable file, checksum mismatch).
    """
    path = Path(path)
    array_path, manifest_path = path.with_suffix(".npz"), path.with_suffix(".json")
    for needed in (array_path, manifest_path):
        if not needed.is_file():
            raise FileNotFoundError(f"prepared dataset file {needed} not found; run `cldsgm prepare` first")
    manifest = read_manifest(manifest_path)
    try:
        with np.load(array_path) as arrays:
            data = arrays["data"]
            labels = arrays["labels"] if "labels" in arrays.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"prepared dataset {array_path} is unreadable ({err}); prepare it again") from err
    if len(data) == 0:
        raise ValueError(f"prepared dataset {array_path} is empty (0 samples); prepare it again")
    if array_sha256(data) != manifest["sha256"]:
        raise ValueError(f"checksum mismatch for {array_path}: the file was modified after preparation "
                         f"(manifest {manifest_path}); prepare it again")
    return data, labels, manifest
