"""Checkpoints: written atomically, loaded as plain data only, checked on load (format, architecture, truncation)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from cldsgm.utils.io import atomic_path, remove_stale_temporaries

__all__ = ["FORMAT", "UnsafeCheckpointError", "load_checkpoint", "load_tensor_file", "remove_stale_temporaries",
           "save_checkpoint"]

FORMAT = "cldsgm-checkpoint-v1"


class UnsafeCheckpointError(ValueError):
    """A file whose pickle asks to build objects other than tensors and plain containers (possibly code)."""


def save_checkpoint(path: str | Path, state: dict) -> None:
    """torch.save to a temporary name, then rename: a kill mid-write leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_tensor_file(path: str | Path, *, what: str = "file"):
    """torch.load(path) as plain data: tensors, dicts, lists, strings and numbers, never code.

    Every .pt/.pth we read goes through here with weights_only=True: a pickle whose opcodes would call
    anything else (an os.system payload in `__reduce__`, say) is refused before it runs.
    Raises FileNotFoundError, UnsafeCheckpointError (code or foreign objects) or ValueError (truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's restricted unpickler raises UnpicklingError for any global it does not allow; a truncated
        # zip surfaces as RuntimeError or BadZipFile instead, so this branch means "foreign objects"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(f"{what} {path} is not a plain checkpoint: refusing to unpickle code "
                                    f"({first[:200]})") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{what} {path} is truncated or corrupted ({err}); delete it to start over") from err


def load_checkpoint(path: str | Path, *, network: dict | None = None) -> dict:
    """Load a checkpoint; if `network` ({'name', 'options'}) is given it must match the checkpoint's.

    Raises FileNotFoundError, UnsafeCheckpointError (a pickle that would run code), or ValueError for a
    truncated/corrupted file or another architecture.
    """
    state = load_tensor_file(path, what="checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cldsgm checkpoint (expected format {FORMAT})")
    if network is not None and state.get("network") != network:
        raise ValueError(f"checkpoint {path} is of another architecture: it holds {state.get('network')}, "
                         f"the config asks for {network}")
    return state
