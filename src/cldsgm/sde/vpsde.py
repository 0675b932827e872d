"""The variance-preserving SDE baseline (Song et al. 2021): dx = -beta/2 x dt + sqrt(beta) dW."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cldsgm.sde._broadcast import per_sample
from cldsgm.sde.base import LinearSDE, Perturbed
from cldsgm.sde.schedule import LinearBeta, as_time

__all__ = ["VPSDE"]


class VPSDE(LinearSDE):
    """VP-SDE with linear beta(t) from beta_min to beta_max (0.1 and 20 in Score-SDE).

    The state is the data itself; there is one kernel (conditioned on x0), so objective must be 'dsm'.
    """

    state_blocks = ("x",)
    noise_blocks = ("x",)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.schedule = LinearBeta(beta_min, beta_max)

    def clock(self, t: Tensor) -> Tensor:
        return self.schedule.integral(as_time(t))

    def mean_coeff(self, t: Tensor) -> Tensor:
        """alpha_t = e^{-B/2}, float64."""
        return torch.exp(-0.5 * self.clock(t))

    def var(self, t: Tensor, var0: float | Tensor = 0.0) -> Tensor:
        """sigma_t^2 = e^{-B} var0 + 1 - e^{-B} for a start variance var0, float64 (expm1: no cancellation)."""
        clock = self.clock(t)
        return torch.exp(-clock) * torch.as_tensor(var0, dtype=torch.float64) - torch.expm1(-clock)

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.var(t))

    def ell(self, t: Tensor, objective: str = "dsm") -> Tensor:
        """1 / sigma_t: grad log p(x_t | x0) = -ell_t eps."""
        self._check_objective(objective)
        return 1.0 / self.std(t)

    @staticmethod
    def _check_objective(objective: str) -> None:
        if objective != "dsm":
            raise ValueError(f"VPSDE has a single kernel: objective must be 'dsm', got {objective!r}")

    def drift(self, u: Tensor, t: Tensor) -> Tensor:
        return -0.5 * per_sample(self.beta(as_time(t)), u) * u

    def diffusion(self, t: Tensor, like: Tensor) -> Tensor:
        return torch.sqrt(per_sample(self.beta(as_time(t)), like))

    def half_g2(self, t: Tensor) -> tuple[Tensor, ...]:
        return (0.5 * self.beta(as_time(t)),)

    def perturb(self, x0: Tensor, t: Tensor, objective: str = "dsm", *, eps: Tensor | None = None,
                generator: torch.Generator | None = None) -> Perturbed:
        """x_t = alpha_t x0 + sigma_t eps; x0: [B, C, ...], t: float64 [B]."""
        self._check_objective(objective)
        t = as_time(t)
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        std = self.std(t)
        return Perturbed(per_sample(self.mean_coeff(t), x0) * x0 + per_sample(std, x0) * eps, eps, std)

    def score_from_eps(self, eps: Tensor, t: Tensor, objective: str = "dsm") -> Tensor:
        return -eps * per_sample(self.ell(t, objective), eps)

    def eps_from_score(self, score: Tensor, t: Tensor, objective: str = "dsm") -> Tensor:
        return -score / per_sample(self.ell(t, objective), score)

    def x0_from_eps(self, u: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        return (u - per_sample(self.std(t), u) * eps) / per_sample(self.mean_coeff(t), u)

    def prior_from_normal(self, z: Tensor) -> Tensor:
        """The prior is N(0, I): z itself."""
        return z

    def prior_sample(self, shape, *, generator: torch.Generator | None = None, dtype=torch.float32,
                     device=None) -> Tensor:
        return self.prior_from_normal(torch.randn(shape, generator=generator, dtype=dtype, device=device))

    def prior_logp(self, u: Tensor) -> Tensor:
        dims = u[0].numel()
        return -0.5 * dims * math.log(2 * math.pi) - 0.5 * u.flatten(1).pow(2).sum(1)

    def prior_score(self, u: Tensor) -> Tensor:
        return -u
