"""A torch Dataset over a prepared dataset: scaling to [-1, 1], optional flip and dequantisation."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from cldsgm.data.prepared import load_prepared

__all__ = ["PreparedDataset", "scale_images"]


def scale_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixel values k -> float32 2 k / 255 - 1 in [-1, 1] (the references' centring)."""
    return images.to(torch.float32) * (2.0 / 255.0) - 1.0


class PreparedDataset(Dataset):
    """Items of a prepared dataset as float32 tensors.

    Images (uint8 [C, H, W]) map to [-1, 1]: x = 2 k / 255 - 1, or with dequantize=True x = 2 (k + U) / 256 - 1
    with U ~ U[0, 1) (for likelihoods in bits/dim). hflip flips each item left-right with probability 1/2.
    Points (toy data) are returned as stored; flip and dequantisation do not apply to them.
    Randomness uses torch's global generator (seeded per DataLoader worker by torch).
    """

    def __init__(self, path, *, hflip: bool = False, dequantize: bool = False, return_labels: bool = False):
        self.data, self.labels, self.manifest = load_prepared(path)
        if self.manifest["kind"] != "image" and (hflip or dequantize):
            raise ValueError(f"hflip and dequantize apply to images, not to {self.manifest['kind']} data ({path})")
        if return_labels and self.labels is None:
            raise ValueError(f"{path} has no labels")
        self.hflip, self.dequantize, self.return_labels = hflip, dequantize, return_labels
        self._tensor = torch.from_numpy(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        item = self._tensor[index]
        if self.manifest["kind"] == "image":
            if self.dequantize:
                item = 2.0 * (item.to(torch.float32) + torch.rand(item.shape)) / 256.0 - 1.0
            else:
                item = scale_images(item)
            if self.hflip and torch.rand(()) < 0.5:
                item = item.flip(-1)
        if self.return_labels:
            return item, int(self.labels[index])
        return item
