"""Exact scores of Gaussian-mixture data under VPSDE, CLD and PSLD.

Under a linear SDE a Gaussian data component N(m_k, diag(s_k^2)) stays Gaussian: for phase space (with
v0 ~ N(0, gamma M), the HSM law) it becomes N((Phi_xx m_k, Phi_vx m_k), Sigma_t(s_k^2, gamma M)) per
coordinate, for VPSDE N(alpha_t m_k, alpha_t^2 s_k^2 + 1 - alpha_t^2). The perturbed law p_t is the mixture
of these with the same weights, so its score is the responsibility-weighted sum of Gaussian scores. These
are the *true* marginals: numerical_eps, a training device, plays no part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cldsgm.sde import VPSDE, PhaseSpaceSDE
from cldsgm.sde.schedule import as_time

__all__ = ["GaussianMixture", "diamond", "oracle_law", "standard_gaussian", "swissroll_mixture", "swissroll_points"]


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of axis-aligned Gaussians in R^d (float64).

    weights: [K] summing to 1; means: [K, d]; stds: [K, d].
    """

    weights: Tensor
    means: Tensor
    stds: Tensor

    def __post_init__(self) -> None:
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.stds.shape != (k, d):
            raise ValueError(f"weights [K], means [K, d], stds [K, d] expected, got {tuple(self.weights.shape)}, "
                             f"{tuple(self.means.shape)}, {tuple(self.stds.shape)}")
        if not (self.stds > 0).all() or not (self.weights >= 0).all():
            raise ValueError("stds must be > 0 and weights >= 0")
        if abs(float(self.weights.sum()) - 1) > 1e-9:
            raise ValueError(f"weights must sum to 1, got {float(self.weights.sum())!r}")

    @classmethod
    def gaussian(cls, dim: int, std: float = 1.0) -> GaussianMixture:
        """A single N(0, std^2 I_dim)."""
        return cls(torch.ones(1, dtype=torch.float64), torch.zeros(1, dim, dtype=torch.float64),
                   torch.full((1, dim), float(std), dtype=torch.float64))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n draws, float64 [n, d]."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[component] + self.stds[component] * z

    def component(self, k: int) -> GaussianMixture:
        """Component k alone, as a law of its own (a class of a class-conditional oracle)."""
        if not 0 <= k < len(self.weights):
            raise ValueError(f"component {k!r} is out of range: this law has components 0 ... {len(self.weights) - 1}")
        return GaussianMixture(torch.ones(1, dtype=torch.float64), self.means[k: k + 1], self.stds[k: k + 1])

    def classify(self, x: Tensor) -> Tensor:
        """The most probable component of each data point x [n, d] (the class oracle of conditional samples): [n]."""
        z = (x.to(torch.float64)[:, None, :] - self.means) / self.stds
        log_comp = -0.5 * (z**2).sum(-1) - torch.log(self.stds).sum(-1)
        return (torch.log(self.weights) + log_comp).argmax(dim=1)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) of the data, [n]."""
        z = (x.to(torch.float64)[:, None, :] - self.means) / self.stds
        log_comp = -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1) - torch.log(self.stds).sum(-1)
        return torch.logsumexp(torch.log(self.weights) + log_comp, dim=1)

    def score_fn(self, sde):
        """The exact score (u, t) -> grad_u log p_t(u) of the perturbed data law under `sde`.

        u: [B, state_channels] with state_channels = d (VPSDE) or 2d (phase space); t: float64 [] or [B].
        """
        if isinstance(sde, VPSDE):
            return lambda u, t: self._vp_score(sde, u, t)
        if isinstance(sde, PhaseSpaceSDE):
            return lambda u, t: self._phase_score(sde, u, t)
        raise TypeError(f"no exact score for {type(sde).__name__}")

    def _responsibilities(self, log_comp: Tensor) -> Tensor:
        return torch.softmax(torch.log(self.weights)[:, None] + log_comp.sum(-1).T, dim=0).T  # [B, K]

    def _vp_terms(self, sde: VPSDE, u: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(log_comp [B, K, d]: each component's log-density per coordinate at u, the precision times the
        difference [B, K, d]) of the perturbed law p_t under the VPSDE."""
        t = as_time(t).to(u.device).reshape(-1, 1, 1)
        mean = sde.mean_coeff(t) * self.means
        var = sde.var(t, self.stds**2)
        diff = u.to(torch.float64)[:, None, :] - mean  # [B, K, d]
        return -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)), diff / var

    def _phase_terms(self, sde: PhaseSpaceSDE, u: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log_comp [B, K, d] per coordinate pair (x_j, v_j), precision x difference of the x and v blocks) of the
        perturbed law p_t in phase space (v0 ~ N(0, gamma M), the HSM law)."""
        t = as_time(t).to(u.device).reshape(-1, 1, 1)
        phi_xx, _, phi_vx, _ = sde.transition(sde.clock(t))
        cov = sde.cov(t, self.stds**2, sde.init_v_var)  # entries [B or 1, K, d]
        x, v = sde.split(u.to(torch.float64))
        diff_x, diff_v = x[:, None, :] - phi_xx * self.means, v[:, None, :] - phi_vx * self.means
        prec_x, prec_v = cov.solve(diff_x, diff_v)
        log_comp = -0.5 * (diff_x * prec_x + diff_v * prec_v + torch.log(cov.det()) + 2 * math.log(2 * math.pi))
        return log_comp, prec_x, prec_v

    def _vp_score(self, sde: VPSDE, u: Tensor, t: Tensor) -> Tensor:
        log_comp, prec_diff = self._vp_terms(sde, u, t)
        weights = self._responsibilities(log_comp)
        return (weights[:, :, None] * (-prec_diff)).sum(1).to(u.dtype)

    def _phase_score(self, sde: PhaseSpaceSDE, u: Tensor, t: Tensor) -> Tensor:
        log_comp, prec_x, prec_v = self._phase_terms(sde, u, t)
        weights = self._responsibilities(log_comp)[:, :, None]
        return sde.join(-(weights * prec_x).sum(1), -(weights * prec_v).sum(1)).to(u.dtype)

    def marginal_log_prob(self, sde, u: Tensor, t: Tensor) -> Tensor:
        """log p_t(u) of the perturbed data law under `sde` (phase space: of the state (x, v), v0 ~ N(0, gamma M)),
        [B] float64; u: [B, state_channels], t: float64 [] or [B]."""
        if isinstance(sde, VPSDE):
            log_comp = self._vp_terms(sde, u, t)[0]
        elif isinstance(sde, PhaseSpaceSDE):
            log_comp = self._phase_terms(sde, u, t)[0]
        else:
            raise TypeError(f"no marginal law for {type(sde).__name__}")
        return torch.logsumexp(torch.log(self.weights)[None, :] + log_comp.sum(-1), dim=1)


def diamond(std: float = 0.04) -> GaussianMixture:
    """The 9-component 'diamond' of the CLD toy experiments (CLD-SGM's util/toy_data.py).

    Means: the grid {-0.5, 0, 0.5}^2 rotated by 45 degrees, i.e. right-multiplied by [[1, -1], [1, 1]] / sqrt(2);
    equal weights, isotropic std 0.04.
    """
    grid = torch.tensor([(a, b) for a in (-0.5, 0.0, 0.5) for b in (-0.5, 0.0, 0.5)], dtype=torch.float64)
    rotation = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64) / math.sqrt(2)
    return GaussianMixture(torch.full((9,), 1 / 9, dtype=torch.float64), grid @ rotation,
                           torch.full((9, 2), float(std), dtype=torch.float64))


def standard_gaussian() -> GaussianMixture:
    """N(0, 0.5^2 I) in 2-D: the one-component law (its exact score is linear)."""
    return GaussianMixture.gaussian(2, 0.5)


def swissroll_points(n: int, rng: np.random.Generator) -> np.ndarray:
    """CLD-SGM's toy swissroll: 5 clusters (p = 0.2) of make_swiss_roll(noise=0.2) coordinates (0, 2) x 0.01."""
    from sklearn.datasets import make_swiss_roll

    offsets = np.array([(0.0, 0.0), (0.8, 0.8), (0.8, -0.8), (-0.8, -0.8), (-0.8, 0.8)])
    counts = rng.multinomial(n, [0.2] * 5)
    parts = []
    for offset, count in zip(offsets, counts, strict=True):
        state = int(rng.integers(2**31))  # drawn for every cluster: the stream does not depend on the counts
        if count:  # a cluster can get no point when n is small
            roll, _ = make_swiss_roll(int(count), noise=0.2, random_state=state)
            parts.append(0.01 * roll[:, [0, 2]] + offset)
    points = np.concatenate(parts)
    return points[rng.permutation(n)]


def swissroll_mixture(components: int = 1000, std: float = 0.01) -> GaussianMixture:
    """A stand-in law for the multimodal swissroll with an exact score: 1000 equal Gaussians N(p_k, 0.01^2 I)
    centred on seeded swissroll points p_k (the swissroll itself has no closed-form density): the training split's
    points of seed 12345 (cldsgm.data.sources.toy), in float32 as prepared data holds them."""
    points = swissroll_points(components, np.random.default_rng([12345, 0])).astype(np.float32)
    means = torch.from_numpy(points.astype("float64"))
    return GaussianMixture(torch.full((components,), 1.0 / components, dtype=torch.float64), means,
                           torch.full_like(means, std))


def oracle_law(name: str) -> GaussianMixture:
    """The exact-score law `name` of cldsgm.catalog.ORACLES; ValueError naming the choices."""
    from cldsgm import catalog

    if name not in catalog.ORACLES:
        raise ValueError(f"unknown oracle {name!r}; choose from {sorted(catalog.ORACLES)}")
    return catalog.load(catalog.ORACLES[name])()
