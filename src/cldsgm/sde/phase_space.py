"""Critically damped phase-space diffusions: CLD (Dockhorn et al. 2022) and PSLD (Pandey & Mandt 2023).

Both are linear SDEs on u = (x, v) acting per coordinate,

    du = beta(t) (A u) dt + sqrt(beta(t) Dbar) dW,      A = -lam I + N,  N^2 = 0,  Dbar = diag(d_x, d_v),

with a 2x2 drift A that has a double eigenvalue -lam (critical damping). In the clock B(t) = int beta:

    mean:        mu_t    = Phi(B) mu_0,         Phi(B) = exp(B A) = e^{-lam B} (I + B N)
    covariance:  Sigma_t = Phi Sigma_0 Phi^T + int_0^B Phi(r) Dbar Phi(r)^T dr.

The integral is D I_0 + (N D + D N^T) I_1 + N D N^T I_2 with I_k(B) = int_0^B r^k e^{-2 lam r} dr
= k!/(2 lam)^{k+1} P(k+1, 2 lam B) (P: regularised lower incomplete gamma). Every term is non-negative on
the diagonal, so unlike the references' expanded formulas nothing cancels as t -> 0: at t = 1e-5 this gives
the exact l_HSM = 193.7175 where the reference's float64 formula gives 193.7203 (the CLD paper, App. B.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cldsgm.sde._broadcast import per_sample
from cldsgm.sde.base import OBJECTIVES, LinearSDE, Perturbed
from cldsgm.sde.block_gaussian import Cov2, Tri2
from cldsgm.sde.schedule import LinearBeta, as_time

__all__ = ["PhaseSpaceSDE", "CLD", "PSLD"]


def _check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return objective


def _broadcast(factor: Tri2, like: Tensor) -> Tri2:
    """The factor's per-sample entries reshaped (and cast) to broadcast against `like`."""
    return Tri2(factor.mode, *(per_sample(c, like) for c in (factor.a, factor.b, factor.c)))


def _lyapunov_moment(k: int, rate: float, clock: Tensor) -> Tensor:
    """I_k(B) = int_0^B r^k e^{-rate r} dr, stable for small B (no 1 - e^{-x} cancellation)."""
    a = torch.full_like(clock, k + 1.0)
    return math.factorial(k) / rate ** (k + 1) * torch.special.gammainc(a, rate * clock)


class PhaseSpaceSDE(LinearSDE):
    """A critically damped linear SDE on (x, v); CLD and PSLD set its matrices (see the module docstring).

    Args:
        schedule: beta(t).
        drift_matrix: A as ((a_xx, a_xv), (a_vx, a_vv)) per unit of the clock B.
        noise: (d_x, d_v), the diagonal of Dbar per unit of B.
        mass: M; the stationary law is N(0, diag(1, M)).
        init_v_var: variance of the initial velocity, gamma M (CLD) or kappa M (PSLD).
        numerical_eps: added to the kernel's xx and vv entries after all algebra (never to xv).
        decomp_mode: 'lower' (Cholesky) or 'upper' square root of the kernel covariance.
    """

    state_blocks = ("x", "v")

    def __init__(self, schedule, drift_matrix, noise, mass, init_v_var, numerical_eps, decomp_mode):
        if not numerical_eps >= 0:
            raise ValueError(f"numerical_eps must be >= 0, got {numerical_eps!r}")
        if decomp_mode not in ("lower", "upper"):
            raise ValueError(f"decomp_mode must be 'lower' or 'upper', got {decomp_mode!r}")
        self.schedule = schedule
        (a_xx, a_xv), (a_vx, a_vv) = drift_matrix
        self.drift_matrix = ((float(a_xx), float(a_xv)), (float(a_vx), float(a_vv)))
        self.lam = -(a_xx + a_vv) / 2.0  # double eigenvalue is -lam (critical damping)
        self.nilpotent = ((a_xx + self.lam, a_xv), (a_vx, a_vv + self.lam))
        (n_xx, n_xv), (n_vx, n_vv) = self.nilpotent
        n2 = (n_xx * n_xx + n_xv * n_vx, n_xx * n_xv + n_xv * n_vv, n_vx * n_xx + n_vv * n_vx,
              n_vx * n_xv + n_vv * n_vv)
        if max(abs(e) for e in n2) > 1e-9 * (1 + self.lam**2):
            raise ValueError("drift matrix is not critically damped (A + lam I is not nilpotent)")
        self.noise = (float(noise[0]), float(noise[1]))
        self.mass = float(mass)
        self.init_v_var = float(init_v_var)
        self.numerical_eps = float(numerical_eps)
        self.decomp_mode = decomp_mode
        self.noise_blocks = tuple(b for b, d in zip(("x", "v"), self.noise, strict=True) if d > 0)

    # -- kernel coefficients (float64) --------------------------------------------------------------------
    def clock(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds, float64."""
        return self.schedule.integral(as_time(t))

    def transition(self, clock: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Phi(B) = e^{-lam B}(I + B N) as its entries (phi_xx, phi_xv, phi_vx, phi_vv), float64."""
        clock = torch.as_tensor(clock, dtype=torch.float64)
        decay = torch.exp(-self.lam * clock)
        (n_xx, n_xv), (n_vx, n_vv) = self.nilpotent
        return (decay * (1 + clock * n_xx), decay * clock * n_xv, decay * clock * n_vx,
                decay * (1 + clock * n_vv))

    def added_cov(self, clock: Tensor) -> Cov2:
        """int_0^B Phi(r) Dbar Phi(r)^T dr: the covariance the noise adds over a clock interval B."""
        clock = torch.as_tensor(clock, dtype=torch.float64)
        i0, i1, i2 = (_lyapunov_moment(k, 2 * self.lam, clock) for k in range(3))
        (n_xx, n_xv), (n_vx, n_vv) = self.nilpotent
        d_x, d_v = self.noise
        # N D + D N^T and N D N^T, entrywise, for D = diag(d_x, d_v).
        nd_xx, nd_xv, nd_vv = 2 * n_xx * d_x, n_vx * d_x + n_xv * d_v, 2 * n_vv * d_v
        ndn_xx = n_xx**2 * d_x + n_xv**2 * d_v
        ndn_xv = n_xx * n_vx * d_x + n_xv * n_vv * d_v
        ndn_vv = n_vx**2 * d_x + n_vv**2 * d_v
        return Cov2(d_x * i0 + nd_xx * i1 + ndn_xx * i2, nd_xv * i1 + ndn_xv * i2,
                    d_v * i0 + nd_vv * i1 + ndn_vv * i2)

    def cov(self, t: Tensor, cov0_xx: float | Tensor = 0.0, cov0_vv: float | Tensor = 0.0) -> Cov2:
        """Exact Sigma_t for a start covariance diag(cov0_xx, cov0_vv) (no numerical_eps), float64."""
        clock = self.clock(t)
        phi_xx, phi_xv, phi_vx, phi_vv = self.transition(clock)
        added = self.added_cov(clock)
        cov0_xx = torch.as_tensor(cov0_xx, dtype=torch.float64)
        cov0_vv = torch.as_tensor(cov0_vv, dtype=torch.float64)
        return Cov2(
            phi_xx**2 * cov0_xx + phi_xv**2 * cov0_vv + added.xx,
            phi_xx * phi_vx * cov0_xx + phi_xv * phi_vv * cov0_vv + added.xv,
            phi_vx**2 * cov0_xx + phi_vv**2 * cov0_vv + added.vv,
        )

    def kernel_cov0_vv(self, objective: str) -> float:
        """Start variance of v: 0 when v0 is conditioned on (DSM), gamma M when marginalised (HSM)."""
        return self.init_v_var if _check_objective(objective) == "hsm" else 0.0

    def perturbation_cov(self, t: Tensor, objective: str = "hsm") -> Cov2:
        """The kernel covariance actually trained on: exact Sigma_t plus numerical_eps on the diagonal."""
        return self.cov(t, 0.0, self.kernel_cov0_vv(objective)).add_diag(self.numerical_eps)

    def factor(self, t: Tensor, objective: str = "hsm") -> Tri2:
        """Square root (decomp_mode) of perturbation_cov, float64."""
        return self.perturbation_cov(t, objective).factor(self.decomp_mode)

    def ell(self, t: Tensor, objective: str = "hsm") -> Tensor:
        """l_t = sqrt(Sigma_xx / det Sigma): grad_v log p(u_t | .) = -l_t eps_v under the Cholesky factor."""
        cov = self.perturbation_cov(t, objective)
        return torch.sqrt(cov.xx / cov.det())

    def splitting_ou(self) -> PhaseSpaceSDE:
        """The part of the reverse SDE that SSCS solves exactly, as a forward OU process in the clock B.

        Its drift is A~ = -A - Dbar Sigma_inf^{-1} (CLD: [[0, -M^-1], [1, -Gamma M^-1]]), with the same noise
        and the same stationary law N(0, diag(1, M)); it is again critically damped
        (the PSLD paper's splitting sampler).
        """
        (a_xx, a_xv), (a_vx, a_vv) = self.drift_matrix
        d_x, d_v = self.noise
        drift = ((-a_xx - d_x, -a_xv), (-a_vx, -a_vv - d_v / self.mass))
        return PhaseSpaceSDE(self.schedule, drift, self.noise, self.mass, self.init_v_var, self.numerical_eps,
                             "lower")

    # -- the process --------------------------------------------------------------------------------------
    def drift(self, u: Tensor, t: Tensor) -> Tensor:
        """f(u, t) = beta(t) A u, shaped like u ([B, 2C, ...])."""
        x, v = self.split(u)
        (a_xx, a_xv), (a_vx, a_vv) = self.drift_matrix
        beta = per_sample(self.beta(as_time(t)), u)
        return self.join(beta * (a_xx * x + a_xv * v), beta * (a_vx * x + a_vv * v))

    def diffusion(self, t: Tensor, like: Tensor) -> Tensor:
        """g(t) = sqrt(beta(t) d) per block, shape [B or 1, 2C, 1, ...]."""
        beta = per_sample(self.beta(as_time(t)), like)
        per_channel = torch.tensor(self.noise, dtype=like.dtype, device=like.device)
        per_channel = per_channel.repeat_interleave(like.shape[1] // 2).reshape(1, -1, *[1] * (like.ndim - 2))
        return torch.sqrt(beta * per_channel)

    def half_g2(self, t: Tensor) -> tuple[Tensor, ...]:
        beta = self.beta(as_time(t))
        return tuple(0.5 * beta * d for d in self.noise if d > 0)

    def mean(self, x0: Tensor, v0: Tensor | None, t: Tensor) -> tuple[Tensor, Tensor]:
        """mu_t = Phi(B(t)) (x0, v0), per coordinate; v0=None means v0 = 0 (the HSM mean)."""
        phi_xx, phi_xv, phi_vx, phi_vv = (per_sample(c, x0) for c in self.transition(self.clock(t)))
        if v0 is None:
            return phi_xx * x0, phi_vx * x0
        return phi_xx * x0 + phi_xv * v0, phi_vx * x0 + phi_vv * v0

    def perturb(self, x0: Tensor, t: Tensor, objective: str = "hsm", *, eps: Tensor | None = None,
                v0: Tensor | None = None, generator: torch.Generator | None = None) -> Perturbed:
        """Draw u_t ~ p(u_t | x0) (HSM) or p(u_t | x0, v0) (DSM) by reparameterisation.

        x0: [B, C, ...] data; t: float64 [B]; eps: optional [B, 2C, ...] standard normal noise;
        v0: DSM only, the initial velocity (drawn from N(0, gamma M) when None).
        """
        t = as_time(t)
        if eps is None:
            eps = torch.randn((x0.shape[0], 2 * x0.shape[1], *x0.shape[2:]), generator=generator,
                              dtype=x0.dtype, device=x0.device)
        if _check_objective(objective) == "dsm" and v0 is None:
            v0 = math.sqrt(self.init_v_var) * torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                                                          device=x0.device)
        if objective == "hsm":
            v0 = None
        mean_x, mean_v = self.mean(x0, v0, t)
        factor = self.factor(t, objective)
        noise_x, noise_v = _broadcast(factor, x0).matvec(*self.split(eps))
        return Perturbed(self.join(mean_x + noise_x, mean_v + noise_v), eps, factor)

    # -- conversions between eps, score and x0 ------------------------------------------------------------
    def _scaled_factor(self, t: Tensor, objective: str, like: Tensor) -> Tri2:
        return _broadcast(self.factor(t, objective), like)

    def _full_eps(self, eps_noise: Tensor) -> tuple[Tensor, Tensor]:
        parts = torch.chunk(eps_noise, len(self.noise_blocks), dim=1)
        named = dict(zip(self.noise_blocks, parts, strict=True))
        zero = torch.zeros_like(parts[0])
        return named.get("x", zero), named.get("v", zero)

    def score_from_eps(self, eps_noise: Tensor, t: Tensor, objective: str = "hsm") -> Tensor:
        """Score -L^{-T} eps of the kernel, from the noise-block eps ([B, n_noise_channels, ...]).

        Returns a state-shaped score; blocks that receive no noise are zero (they never enter a sampler).
        """
        s_x, s_v = self._scaled_factor(t, objective, eps_noise).inv_t_matvec(*self._full_eps(eps_noise))
        return self.join(-s_x if "x" in self.noise_blocks else torch.zeros_like(s_x),
                         -s_v if "v" in self.noise_blocks else torch.zeros_like(s_v))

    def eps_from_score(self, score: Tensor, t: Tensor, objective: str = "hsm") -> Tensor:
        """Inverse of score_from_eps: eps = -L^T s on the noise blocks ([B, n_noise_channels, ...])."""
        s_x, s_v = self.split(score)
        if "x" not in self.noise_blocks:
            s_x = torch.zeros_like(s_x)
        if "v" not in self.noise_blocks:
            s_v = torch.zeros_like(s_v)
        e_x, e_v = self._scaled_factor(t, objective, score).t_matvec(s_x, s_v)
        return self.noise_target(self.join(-e_x, -e_v))

    def x0_from_eps(self, u: Tensor, eps_noise: Tensor, t: Tensor) -> Tensor:
        """Invert the HSM reparameterisation u_t = Phi (x0, 0) + L eps for x0, given the noise-block eps.

        With one noise block the missing half of eps is eliminated with the other row, as in the CLD
        reference's x0 helper; with both, x0 is the x-row of Phi^{-1}(u_t - L eps).
        """
        x, v = self.split(u)
        factor = self._scaled_factor(t, "hsm", u)
        phi_xx, phi_xv, phi_vx, phi_vv = (per_sample(c, u) for c in self.transition(self.clock(t)))
        a, b, c = factor.a, factor.b, factor.c
        e_x, e_v = self._full_eps(eps_noise)
        if self.noise_blocks == ("x", "v"):
            r_x, r_v = factor.matvec(e_x, e_v)
            det = phi_xx * phi_vv - phi_xv * phi_vx
            return (phi_vv * (x - r_x) - phi_xv * (v - r_v)) / det
        if factor.mode == "lower":  # eps_v known: x = phi_xx x0 + a e_x, v = phi_vx x0 + b e_x + c e_v
            return (v - c * e_v - b / a * x) / (phi_vx - phi_xx * b / a)
        # upper, eps_x known: x = phi_xx x0 + a e_x + b e_v, v = phi_vx x0 + c e_v
        return (x - a * e_x - b / c * v) / (phi_xx - phi_vx * b / c)

    # -- prior --------------------------------------------------------------------------------------------
    def prior_from_normal(self, z: Tensor) -> Tensor:
        """Map standard normal z ([B, 2C, ...]) to a prior draw: x = z_x, v = sqrt(M) z_v."""
        x, v = self.split(z)
        return self.join(x, math.sqrt(self.mass) * v)

    def prior_sample(self, shape, *, generator: torch.Generator | None = None, dtype=torch.float32,
                     device=None) -> Tensor:
        """u_T ~ N(0, I) x N(0, M I) for a state shape [B, 2C, ...]."""
        return self.prior_from_normal(torch.randn(shape, generator=generator, dtype=dtype, device=device))

    def prior_logp(self, u: Tensor) -> Tensor:
        """log N(x; 0, I) + log N(v; 0, M I), summed per sample: [B]."""
        x, v = self.split(u)
        dims = x[0].numel()
        log_px = -0.5 * dims * math.log(2 * math.pi) - 0.5 * x.flatten(1).pow(2).sum(1)
        log_pv = -0.5 * dims * math.log(2 * math.pi * self.mass) - 0.5 * v.flatten(1).pow(2).sum(1) / self.mass
        return log_px + log_pv

    def prior_score(self, u: Tensor) -> Tensor:
        """grad log p_T(u) = (-x, -v / M)."""
        x, v = self.split(u)
        return self.join(-x, -v / self.mass)


class CLD(PhaseSpaceSDE):
    """Critically-damped Langevin diffusion (Dockhorn, Vahdat & Kreis, ICLR 2022): Eq. 5 and App. B.1.

        dx = M^{-1} v beta dt,   dv = (-x - Gamma M^{-1} v) beta dt + sqrt(2 Gamma beta) dW,   Gamma = 2 / sqrt(M^{-1}).

    Args:
        beta_min, beta_max: linear beta(t); the paper's CIFAR-10 setting is constant beta = 4.
        m_inv: inverse mass M^{-1} (4 in every shipped config).
        gamma: initial velocity variance as a fraction of M, v0 ~ N(0, gamma M) (0.04).
        numerical_eps: added to the kernel diagonal (1e-9 for CIFAR-10, 1e-6 for toy data and CelebA).
    """

    def __init__(self, beta_min: float = 4.0, beta_max: float = 4.0, m_inv: float = 4.0, gamma: float = 0.04,
                 numerical_eps: float = 1e-9):
        if not m_inv > 0:
            raise ValueError(f"m_inv must be > 0, got {m_inv!r}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.m_inv, self.gamma = float(m_inv), float(gamma)
        self.friction = 2.0 / math.sqrt(m_inv)  # critical damping Gamma^2 = 4 M; the reference has no knob
        super().__init__(LinearBeta(beta_min, beta_max), ((0.0, m_inv), (-1.0, -self.friction * m_inv)),
                         (0.0, 2.0 * self.friction), 1.0 / m_inv, gamma / m_inv, numerical_eps, "lower")


class PSLD(PhaseSpaceSDE):
    """Phase-space Langevin diffusion (Pandey & Mandt, ICCV 2023, arXiv 2303.01748).

        dx = beta/2 (M^{-1} m - Gamma x) dt + sqrt(beta Gamma) dW_x,  dm = beta/2 (-x - nu m) dt + sqrt(beta M nu) dW_m,

    with the reference's critical damping M^{-1} = (Gamma - nu)^2 / 4. With Gamma = 0 only m is noised
    (the reference's 'score_m' mode, CLD-like); with nu = 0 only x (needs decomp_mode='upper').

    Args:
        Gamma, nu: noise and friction on x and on m (0.01 and 4.01 for the CIFAR-10 run).
        beta_min, beta_max: linear beta(t) (constant 8 in every PSLD run).
        kappa: initial momentum variance as a fraction of M, m0 ~ N(0, kappa M) (0.04).
        numerical_eps: added to the kernel diagonal (1e-9).
        decomp_mode: square root used to draw noise and convert eps <-> score ('lower' as the reference).
    """

    def __init__(self, Gamma: float = 0.01, nu: float = 4.01, beta_min: float = 8.0, beta_max: float = 8.0,  # noqa: N803
                 kappa: float = 0.04, numerical_eps: float = 1e-9, decomp_mode: str = "lower"):
        for name, value in (("Gamma", Gamma), ("nu", nu), ("kappa", kappa)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if Gamma == 0 and nu == 0:
            raise ValueError("Gamma and nu are both 0: no noise enters the process")
        m_inv = (Gamma - nu) ** 2 / 4.0
        if not m_inv > 0:
            raise ValueError(f"Gamma == nu == {Gamma!r} gives M^-1 = (Gamma - nu)^2 / 4 = 0 (infinite mass)")
        if Gamma == 0 and decomp_mode != "lower":
            raise ValueError("Gamma = 0 noises only m: decomp_mode must be 'lower'")
        if nu == 0 and decomp_mode != "upper":
            raise ValueError("nu = 0 noises only x: decomp_mode must be 'upper'")
        self.Gamma, self.nu, self.kappa, self.m_inv = float(Gamma), float(nu), float(kappa), m_inv
        super().__init__(LinearBeta(beta_min, beta_max), ((-Gamma / 2, m_inv / 2), (-0.5, -nu / 2)),
                         (Gamma, nu / m_inv), 1.0 / m_inv, kappa / m_inv, numerical_eps, decomp_mode)
