"""FD-digits: the Fréchet distance in the penultimate features of a small CNN trained on the 8x8 digits.

Inception features of 8x8 grayscale digits say little, so the default study measures sample quality with a
classifier of its own: trained by the pipeline on the digits training split (seeded, seconds on 2 cores),
its held-out accuracy recorded, and the Fréchet distance taken between the 128-d features of generated and
held-out test images. It is called FD-digits everywhere, never FID: the numbers compare runs of this tool,
not papers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from cldsgm.data.prepared import scale_images
from cldsgm.utils.io import atomic_path

__all__ = ["FORMAT", "DigitsClassifier", "digits_features", "fd_digits", "load_classifier", "predict",
           "train_classifier"]

FORMAT = "cldsgm-digits-classifier-v1"
FEATURES = 128


class DigitsClassifier(nn.Module):
    """conv 3x3 (32) -> conv 3x3 (64) -> max-pool 2 -> 128 features -> 10 logits, for [B, 1, 8, 8] in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, FEATURES)
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, 8, 8] -> [B, 128] penultimate activations."""
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _as_input(images: np.ndarray) -> torch.Tensor:
    if images.dtype != np.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"FD-digits takes uint8 digits [N, 1, 8, 8], got {images.dtype} {images.shape}")
    return scale_images(torch.from_numpy(images))


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, *, epochs: int = 30, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0) -> DigitsClassifier:
    """Adam on cross-entropy with random one-pixel shifts; seeded, so the same data give the same weights."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = _as_input(train_images), torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            shift = [int(v) for v in torch.randint(-1, 2, (2,), generator=gen)]
            batch = torch.roll(x[idx], shifts=shift, dims=(2, 3))  # a little translation invariance
            loss = F.cross_entropy(model(batch), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: DigitsClassifier, images: np.ndarray) -> np.ndarray:
    """[N] the class the classifier gives each uint8 digit [N, 1, 8, 8]."""
    return model(_as_input(images)).argmax(1).numpy()


def accuracy(model: DigitsClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(model, images) == np.asarray(labels)).mean())


def save_classifier(path, model: DigitsClassifier, meta: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "state_dict": model.state_dict(), "meta": meta}, tmp)


def load_classifier(path) -> tuple[DigitsClassifier, dict]:
    """Load (weights_only) a classifier written by save_classifier; ValueError for anything else."""
    from cldsgm.training.checkpoint import load_tensor_file

    state = load_tensor_file(path, what="digits classifier")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a digits classifier of cldsgm (expected format {FORMAT})")
    model = DigitsClassifier()
    model.load_state_dict(state["state_dict"])
    return model.eval(), state["meta"]


@torch.no_grad()
def digits_features(model: DigitsClassifier, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """[N, 128] float64 penultimate features of uint8 digits [N, 1, 8, 8]."""
    x = _as_input(images)
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double().numpy()


def fd_digits(model: DigitsClassifier, images: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between the classifier features of `images` and of `reference` (uint8 digits)."""
    from cldsgm.eval.fid import frechet

    ref = digits_features(model, reference)
    return frechet(digits_features(model, images), ref.mean(0), np.cov(ref, rowvar=False))


def fd_digits_replicates(model: DigitsClassifier, images: np.ndarray, reference_features: np.ndarray,
                         resamples: int, seed: int) -> np.ndarray | None:
    """FD-digits of `resamples` bootstrap resamples of the images (drawn by cldsgm.stats.resample_counts from the
    set's seed, so sets of one seed are resampled alike), against the fixed reference features [m, d]; None for 0."""
    if not resamples:
        return None
    from cldsgm.eval.bootstrap import frechet_replicates
    from cldsgm.stats import resample_counts

    counts = resample_counts(len(images), resamples, seed)
    return frechet_replicates(digits_features(model, images), reference_features.mean(0),
                              np.cov(reference_features, rowvar=False), counts)
