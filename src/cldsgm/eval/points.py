"""Distances of 2-D sample sets to their data law: sliced W2, energy distance and mode coverage."""

from __future__ import annotations

import numpy as np
import torch

from cldsgm.eval.distances import energy_distance, sliced_wasserstein
from cldsgm.oracles import GaussianMixture

__all__ = ["mode_weights", "point_distances"]

MAX_MODES = 50  # mode coverage is reported for mixtures with few, separated components (diamond: 9)


def mode_weights(points: torch.Tensor, mixture: GaussianMixture) -> np.ndarray:
    """Fraction of points whose most likely component (under the data law) is k, [K]."""
    z = (points.to(torch.float64)[:, None, :] - mixture.means) / mixture.stds
    log_comp = torch.log(mixture.weights) - 0.5 * (z**2).sum(-1) - torch.log(mixture.stds).sum(-1)
    counts = torch.bincount(log_comp.argmax(1), minlength=len(mixture.weights))
    return (counts.to(torch.float64) / len(points)).numpy()


def point_distances(samples: np.ndarray, reference: np.ndarray, *, mixture: GaussianMixture | None = None,
                    energy_samples: int = 5000, seed: int = 0) -> dict:
    """{'sliced_w2', 'energy', and with a mixture of <= 50 components 'mode_tv', 'mode_weights'}.

    samples, reference: [n, 2] and [m, 2]; both are cut to min(n, m) (sliced W2 matches sorted projections one
    to one); energy distance on the first `energy_samples` of each (it is O(n^2)).
    """
    x, y = torch.from_numpy(np.asarray(samples, np.float64)), torch.from_numpy(np.asarray(reference, np.float64))
    m = min(len(x), len(y))
    out = {"sliced_w2": sliced_wasserstein(x[:m], y[:m], seed=seed),
           "energy": energy_distance(x[:min(m, energy_samples)], y[:min(m, energy_samples)]), "n": m}
    if mixture is not None and len(mixture.weights) <= MAX_MODES:
        weights = mode_weights(x, mixture)
        out["mode_weights"] = weights.tolist()
        out["mode_tv"] = float(0.5 * np.abs(weights - mixture.weights.numpy()).sum())
    return out
