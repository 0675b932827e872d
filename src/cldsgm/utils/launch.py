"""Where this process runs: its torchrun rank, the world size and its device (torch imported only on use)."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Launch", "launch", "resolve_device"]


@dataclass(frozen=True)
class Launch:
    """torchrun's RANK, WORLD_SIZE and LOCAL_RANK (0, 1, 0 for a plain process)."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes shared files and talks to MLflow."""
        return self.rank == 0


def launch() -> Launch:
    """This process's place in a torchrun launch, from the environment torchrun sets."""
    return Launch(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                  int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0):
    """auto | cpu | cuda -> torch.device; cuda:<local_rank> under torchrun. ValueError asking for CUDA without it."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but no CUDA device is available (use cpu)")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")
