"""Integrators for CLD and PSLD that work with 2x2 coefficients per step (integrators_spec.md 2-3).

- sample_conjugate: the conjugate integrator of the probability-flow ODE with B_t = lam I ("lambda-DDIM",
  Pandey, Rudolph & Mandt 2024, section 3.1) on the Cholesky eps: eps(u, t) = -K_t^T s(u, t), K_t the lower
  factor of the HSM kernel. lam = 0 is the exponential integrator with eps frozen over a step (DEIS order 0).
  For CLD (only v noised) only eps_v enters, so the project's eps_v networks suffice.
- sample_ge_ode / sample_ge_sde: Gaussian-exact steps, deterministic (GE-D) and ancestral (GE-A). With
  precision_sigma = sigma_d they are exact in one step for data N(m, sigma_d^2) whatever the step size, so they
  serve as test oracles; on multimodal data they mis-weight modes (options, never defaults). They need the full
  score; a CLD network gives s_v only, and `complete_score` recovers s_x by Tweedie (spec section 1).

All cost one NFE per step plus the denoising step (samplers.grids.time_grid semantics). The coefficients are
computed once per (SDE, grid, option) in float64 (Gauss-Legendre quadrature per step for the conjugate integrator,
a DOP853 matrix ODE for GE-D) and cached.
Notation: steps run t -> t' = t - h (forward time); Phi(B) = e^{BA} is `sde.transition`; the forward process is
du = beta A u dt + sqrt(beta Dbar) dW; Sigma_t(sigma^2) = sde.cov(t, sigma^2, sde.init_v_var).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from cldsgm.samplers.sde_solvers import _finish, _steps
from cldsgm.sde import PhaseSpaceSDE

__all__ = ["complete_score", "conjugate_coefficients", "sample_conjugate", "sample_ge_ode", "sample_ge_sde"]

_ODE_RTOL = 1e-10  # the coefficients are 2x2 per step: make them exact to float64 noise, it costs nothing


def _check(sde) -> None:
    if not isinstance(sde, PhaseSpaceSDE):
        raise ValueError(f"this integrator needs a phase-space SDE (CLD or PSLD), not {type(sde).__name__}")


def _key(sde) -> tuple:
    """What the coefficients depend on: the process, its schedule and the kernel."""
    schedule = sde.schedule
    return (type(sde).__name__, sde.drift_matrix, sde.noise, sde.mass, sde.init_v_var, sde.numerical_eps,
            tuple(sorted((k, v) for k, v in vars(schedule).items() if isinstance(v, float | int))))


def _phi(sde, clock: float) -> np.ndarray:
    """Phi(B) = e^{BA}, 2x2 float64."""
    return np.array(torch.stack(sde.transition(torch.tensor(clock, dtype=torch.float64))).reshape(2, 2).tolist())


def _cov(sde, t: float, sigma2: float | None) -> np.ndarray:
    """Sigma_t(sigma^2) (sigma2 None: the HSM kernel the network was trained on, numerical_eps included)."""
    t = torch.tensor(t, dtype=torch.float64)
    cov = sde.perturbation_cov(t, "hsm") if sigma2 is None else sde.cov(t, sigma2, sde.init_v_var)
    return np.array([[float(cov.xx), float(cov.xv)], [float(cov.xv), float(cov.vv)]])


def _clock(sde, t: float) -> float:
    return float(sde.clock(torch.tensor(t, dtype=torch.float64)))


def _beta(sde, t: float) -> float:
    return float(sde.beta(torch.tensor(t, dtype=torch.float64)))


def _apply(matrix: np.ndarray, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """A 2x2 matrix acting on every coordinate's (x, v) pair."""
    (a, b), (c, d) = matrix.tolist()
    return a * x + b * v, c * x + d * v


# -- the conjugate integrator ------------------------------------------------------------------------------------------
_GAUSS_NODES = 48  # Gauss-Legendre nodes per step: the integrand is smooth on [t', t] (t' >= t_min > 0)


def _phi_batch(sde, clock: Tensor) -> Tensor:
    """Phi(B) for a vector of clocks: [n, 2, 2] float64."""
    return torch.stack(sde.transition(clock), dim=-1).reshape(-1, 2, 2)


def _kernel_batch(sde, t: Tensor) -> Tensor:
    """HSM kernels Sigma_t(0) + numerical_eps for a vector of times: [n, 2, 2] float64."""
    cov = sde.perturbation_cov(t, "hsm")
    return torch.stack([cov.xx, cov.xv, cov.xv, cov.vv], dim=-1).reshape(-1, 2, 2)


@functools.lru_cache(maxsize=64)
def _conjugate_cached(sde_ref, grid: tuple, lam: float):
    sde = sde_ref()
    nodes, weights = (torch.tensor(a, dtype=torch.float64) for a in np.polynomial.legendre.leggauss(_GAUSS_NODES))
    t, t_next = torch.tensor(grid[:-1], dtype=torch.float64), torch.tensor(grid[1:], dtype=torch.float64)
    half = (t - t_next) / 2
    tau = (t_next + t)[:, None] / 2 + half[:, None] * nodes[None, :]  # [steps, nodes]
    flat = tau.reshape(-1)
    clock_next = sde.clock(t_next)
    # Psi(t', tau) = Phi(B(tau) - B(t'))^{-1}: the backward map of du/dt = beta A u from tau to t'
    psi = torch.linalg.inv(_phi_batch(sde, sde.clock(flat) - clock_next.repeat_interleave(_GAUSS_NODES)))
    k_inv_t = torch.linalg.inv(torch.linalg.cholesky(_kernel_batch(sde, flat))).transpose(-1, -2)
    dbar = torch.diag(torch.tensor(sde.noise, dtype=torch.float64))
    scale = torch.exp(lam * (flat - t_next.repeat_interleave(_GAUSS_NODES))) * 0.5 * sde.beta(flat)
    integrand = scale[:, None, None] * psi @ dbar @ k_inv_t
    per_step = integrand.reshape(len(t), _GAUSS_NODES, 2, 2) * weights[None, :, None, None]
    integral = per_step.sum(1) * half[:, None, None]
    h = t - t_next
    linear = ((1.0 - lam * h) * torch.exp(lam * h))[:, None, None] * torch.linalg.inv(
        _phi_batch(sde, sde.clock(t) - clock_next))
    chol = torch.linalg.cholesky(_kernel_batch(sde, t))
    # E = int_t^{t'} ... dtau = -int_{t'}^t ... dtau
    return [(lin.numpy(), -e.numpy(), c.numpy()) for lin, e, c in zip(linear, integral, chol, strict=True)]


class _Ref:
    """The lru_cache key of an SDE: hashed and compared by its parameters (_key), callable for the SDE itself."""

    def __init__(self, sde):
        self.sde, self.key = sde, _key(sde)

    def __call__(self):
        return self.sde

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Ref) and self.key == other.key


def conjugate_coefficients(sde, ts: Tensor, lam: float = 0.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per step t -> t': (linear map, eps map E, K_t), 2x2 float64 each: u' = linear u + E eps, eps = -K_t^T s.

    linear = (1 - lam h) e^{lam h} Psi(t', t); E = int_t^{t'} e^{lam (tau - t')} Psi(t', tau) beta(tau)/2 Dbar
    K_tau^{-T} dtau (spec 2.1, B = lam I). Cached per (SDE, grid, lam).
    """
    _check(sde)
    grid = tuple(float(t) for t in torch.as_tensor(ts, dtype=torch.float64))
    return _conjugate_cached(_Ref(sde), grid, float(lam))


def sample_conjugate(sde, score_fn, u: Tensor, ts: Tensor, *, noise=None, denoise: bool = True,
                     lam: float = 0.0) -> Tensor:
    """The conjugate (lambda-DDIM) integrator of the probability-flow ODE, one NFE per step (spec 2.1).

    lam >= 0: the paper's B_t = lam I; the best lam falls with NFE (on the diamond oracle about 1 at quadratic
    NFE 20, 0.5 at 50, 0 to 0.25 at 100). lam = 0: exponential integrator on the Cholesky eps, first order.
    `noise` is unused (deterministic).
    """
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam!r}")
    coefficients = conjugate_coefficients(sde, ts, lam)
    for (t, _), (linear, eps_map, chol) in zip(_steps(ts), coefficients, strict=True):
        s_x, s_v = sde.split(score_fn(u, t))
        x, v = sde.split(u)
        (l_xx, _), (l_vx, l_vv) = chol.tolist()
        eps_x, eps_v = -(l_xx * s_x + l_vx * s_v), -(l_vv * s_v)  # eps = -K^T s, K lower
        if sde.noise[0] == 0:
            eps_x = torch.zeros_like(eps_x)  # CLD: E has no eps_x column, and the network gives no s_x
        lx, lv = _apply(linear, x, v)
        ex, ev = _apply(eps_map, eps_x, eps_v)
        u = sde.join(lx + ex, lv + ev)
    return _finish(sde, score_fn, u, ts, denoise)


# -- Gaussian-exact steps ------------------------------------------------------------------------------------------
def complete_score(sde, u: Tensor, score: Tensor, t) -> Tensor:
    """The full score from its v block when x is not noised (CLD: networks predict eps_v only), by Tweedie:
    x0_hat = (s_v + (Sigma^{-1} u)_v) / (Sigma^{-1} w)_v, s = -Sigma^{-1}(u - w x0_hat), Sigma = Sigma_t(0)
    the HSM kernel (exact: the kernel score is affine in x0 for any data law). PSLD scores are returned as given."""
    if sde.noise[0] != 0:
        return score
    t = float(torch.as_tensor(t, dtype=torch.float64))
    precision = np.linalg.inv(_cov(sde, t, None))
    phi = _phi(sde, _clock(sde, t))
    w = phi[:, 0]  # mean of u_t given x0 = 1, v0 = 0
    pw = precision @ w
    x, v = sde.split(u)
    _, s_v = sde.split(score)
    x0_hat = (s_v + precision[1, 0] * x + precision[1, 1] * v) / pw[1]
    return sde.join(-(precision[0, 0] * x + precision[0, 1] * v - pw[0] * x0_hat),
                    -(precision[1, 0] * x + precision[1, 1] * v - pw[1] * x0_hat))


@functools.lru_cache(maxsize=64)
def _ge_cached(sde_ref, grid: tuple, sigma2: float, stochastic: bool):
    sde = sde_ref()
    from scipy.integrate import solve_ivp

    a, dbar = np.array(sde.drift_matrix), np.diag(sde.noise)
    coefficients = []
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        forward = _phi(sde, _clock(sde, t) - _clock(sde, t_next))  # F: u_t' -> mean of u_t
        cov_t, cov_next = _cov(sde, t, sigma2), _cov(sde, t_next, sigma2)
        if stochastic:
            f_inv = np.linalg.inv(forward)
            mean_u, mean_s = f_inv, f_inv @ cov_t - cov_next @ forward.T
            cov = cov_next - cov_next @ forward.T @ np.linalg.solve(cov_t, forward @ cov_next)
            coefficients.append((mean_u, mean_s, np.linalg.cholesky((cov + cov.T) / 2)))
        else:
            def rhs(tau, y):
                b = _beta(sde, tau)
                return ((b * a + 0.5 * b * dbar @ np.linalg.inv(_cov(sde, tau, sigma2))) @ y.reshape(2, 2)).ravel()

            psi_hat = solve_ivp(rhs, (t, t_next), np.eye(2).ravel(), method="DOP853", rtol=_ODE_RTOL,
                                atol=1e-14).y[:, -1].reshape(2, 2)
            psi = np.linalg.inv(forward)
            coefficients.append((psi, (psi - psi_hat) @ cov_t, None))
    return coefficients


def _sample_ge(sde, score_fn, u, ts, noise, denoise, precision_sigma, stochastic):
    _check(sde)
    if not precision_sigma >= 0:
        raise ValueError(f"precision_sigma must be >= 0, got {precision_sigma!r}")
    grid = tuple(float(t) for t in torch.as_tensor(ts, dtype=torch.float64))
    coefficients = _ge_cached(_Ref(sde), grid, float(precision_sigma) ** 2, stochastic)
    for (t, _), (map_u, map_s, noise_factor) in zip(_steps(ts), coefficients, strict=True):
        s_x, s_v = sde.split(complete_score(sde, u, score_fn(u, t), t))
        x, v = sde.split(u)
        ux, uv = _apply(map_u, x, v)
        sx, sv = _apply(map_s, s_x, s_v)
        x, v = ux + sx, uv + sv
        if stochastic:
            nx, nv = _apply(noise_factor, *sde.split(noise.like(u)))
            x, v = x + nx, v + nv
        u = sde.join(x, v)
    return _finish(sde, score_fn, u, ts, denoise)


def sample_ge_ode(sde, score_fn, u: Tensor, ts: Tensor, *, noise=None, denoise: bool = True,
                  precision_sigma: float = 0.0) -> Tensor:
    """Gaussian-exact deterministic step (GE-D): u' = Psi u + (Psi - Psi_hat) Sigma_t(sigma_d^2) s, Psi_hat the
    transition of d/dtau = beta A + beta/2 Dbar Sigma_tau(sigma_d^2)^{-1} (spec 2.1). sigma_d = 0 is gDDIM order 0
    (exact for a point mass)."""
    return _sample_ge(sde, score_fn, u, ts, noise, denoise, precision_sigma, stochastic=False)


def sample_ge_sde(sde, score_fn, u: Tensor, ts: Tensor, *, noise, denoise: bool = True,
                  precision_sigma: float = 0.0) -> Tensor:
    """Gaussian-exact ancestral step (GE-A): u' ~ N(F^{-1}(u + S_t s) - S_t' F^T s, S_t' - S_t' F^T S_t^{-1} F S_t')
    with F = Phi(B(t) - B(t')), S = Sigma(sigma_d^2) (spec 3.3): the exact reverse transition for N(m, sigma_d^2)."""
    return _sample_ge(sde, score_fn, u, ts, noise, denoise, precision_sigma, stochastic=True)
