"""Distances of 2-D sample sets to their data law: sliced W2, energy distance and mode coverage."""

from __future__ import annotations

import numpy as np
import torch

from cldsgm.eval.distances import energy_distance, sliced_wasserstein
from cldsgm.oracles import GaussianMixture

__all__ = ["mode_assignments", "mode_weights", "point_distances"]

MAX_MODES = 50  # mode coverage is reported for mixtures with few, separated components (diamond: 9)


def mode_assignments(points: torch.Tensor, mixture: GaussianMixture) -> np.ndarray:
    """[n] the most likely component (under the data law) of each point."""
    z = (points.to(torch.float64)[:, None, :] - mixture.means) / mixture.stds
    log_comp = torch.log(mixture.weights) - 0.5 * (z**2).sum(-1) - torch.log(mixture.stds).sum(-1)
    return log_comp.argmax(1).numpy()


def mode_weights(points: torch.Tensor, mixture: GaussianMixture) -> np.ndarray:
    """Fraction of points whose most likely component (under the data law) is k, [K]."""
    counts = np.bincount(mode_assignments(points, mixture), minlength=len(mixture.weights))
    return counts.astype(np.float64) / len(points)


def point_distances(samples: np.ndarray, reference: np.ndarray, *, mixture: GaussianMixture | None = None,
                    energy_samples: int = 5000, seed: int = 0, resamples: int = 0, resample_seed: int = 0) -> dict:
    """{'sliced_w2', 'energy', and with a mixture of <= 50 components 'mode_tv', 'mode_weights'}.

    samples, reference: [n, 2] and [m, 2]; both are cut to min(n, m) (sliced W2 matches sorted projections one
    to one); energy distance on the first `energy_samples` of each (it is O(n^2)). With resamples > 0 (at least
    100), also 'replicates': {metric: [B] values on resamples of the samples} (cldsgm.eval.bootstrap; the resampling
    seeded by resample_seed, the samples' own seed, so that sets of one seed are paired).
    """
    from cldsgm import stats
    from cldsgm.eval import bootstrap

    x, y = torch.from_numpy(np.asarray(samples, np.float64)), torch.from_numpy(np.asarray(reference, np.float64))
    m = min(len(x), len(y))
    k = min(m, energy_samples)
    out = {"sliced_w2": sliced_wasserstein(x[:m], y[:m], seed=seed),
           "energy": energy_distance(x[:k], y[:k]), "n": m}
    few_modes = mixture is not None and len(mixture.weights) <= MAX_MODES
    if few_modes:
        weights = mode_weights(x, mixture)
        out["mode_weights"] = weights.tolist()
        out["mode_tv"] = float(0.5 * np.abs(weights - mixture.weights.numpy()).sum())
    if resamples:
        counts = stats.resample_counts(m, resamples, resample_seed)
        energy_counts = counts if k == m else stats.resample_counts(k, resamples, resample_seed)
        out["replicates"] = {
            "sliced_w2": bootstrap.sliced_w2_replicates(x[:m].numpy(), y[:m].numpy(), counts, seed=seed),
            "energy": bootstrap.energy_replicates(x[:k].numpy(), y[:k].numpy(), energy_counts)}
        if few_modes:
            all_counts = counts if len(x) == m else stats.resample_counts(len(x), resamples, resample_seed)
            out["replicates"]["mode_tv"] = bootstrap.mode_tv_replicates(
                mode_assignments(x, mixture), mixture.weights.numpy(), all_counts)
    return out
