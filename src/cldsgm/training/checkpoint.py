"""Checkpoints: written atomically, checked on load (format, architecture, truncation)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from cldsgm.utils.io import atomic_path

__all__ = ["FORMAT", "load_checkpoint", "save_checkpoint"]

FORMAT = "cldsgm-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temporary name, then rename: a kill mid-write leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: str | Path, *, network: dict | None = None) -> dict:
    """Load a checkpoint; if `network` ({'name', 'options'}) is given it must match the checkpoint's.

    Raises FileNotFoundError, or ValueError for a truncated/corrupted file or another architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"checkpoint {path} is truncated or corrupted ({err}); delete it to start over") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cldsgm checkpoint (expected format {FORMAT})")
    if network is not None and state.get("network") != network:
        raise ValueError(f"checkpoint {path} is of another architecture: it holds {state.get('network')}, "
                         f"the config asks for {network}")
    return state
