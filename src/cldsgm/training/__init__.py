"""Training: the loop (trainer.py) and checkpoints (checkpoint.py)."""

from cldsgm.training.checkpoint import load_checkpoint, save_checkpoint
from cldsgm.training.trainer import TrainResult, build_sde, train

__all__ = ["TrainResult", "build_sde", "load_checkpoint", "save_checkpoint", "train"]
