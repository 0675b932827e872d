"""Integrators for CLD and PSLD that work with 2x2 coefficients per step (Pandey, Rudolph & Mandt, "Efficient
Integrators for Diffusion Generative Models", ICLR 2024).

- sample_conjugate: the conjugate integrator of the probability-flow ODE as an exponential multistep method in the
  gDDIM factor R (R R^T = Sigma_t(0), dR/dt = beta A R + beta/2 Dbar R^{-T}): the data prediction x0_hat (default) or
  eps_R = -R^T s, interpolated over the last steps (orders 0-3). Order 0 is gDDIM-0, exact for a point mass at any
  step. The lambda-DDIM on the Cholesky eps (Pandey, Rudolph & Mandt 2024, section 3.1, B_t = lam I) stays as
  predict='eps_cholesky': it blows up at coarse steps, because eps_L is not constant along a point mass's
  ODE and the backward map of a coarse step (norm up to ~300 at NFE 5) amplifies its drift.
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

__all__ = ["CONJUGATE_PREDICTIONS", "complete_score", "conjugate_coefficients", "sample_conjugate", "sample_ge_ode",
           "sample_ge_sde"]

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


def _sample_lambda_ddim(sde, score_fn, u, ts, lam):
    """Order 0 on the Cholesky eps (the plain conjugate integrator, kept for comparison)."""
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
    return u


# -- exponential multistep in the gDDIM factor R -----------------------------------------------------------------------
# R_t R_t^T = Sigma_t(0) with dR/dt = beta A R + beta/2 Dbar R^{-T} (gDDIM): along the probability-flow ODE of a point
# mass both eps_R = R^{-1}(u - w x0) and x0_hat stay constant, so freezing either over a step is exact for any step
# size. The Cholesky factor L has no such property: eps_L drifts over a step, and the backward map Psi(t', t) of a
# coarse step (norm ~ e^{beta h ...}) amplifies that drift -- the conjugate integrator's blow-up at low NFE.

def _r_factor(sde, grid: tuple):
    """R_tau for tau in [t_min, 1]: a callable of a float64 array [m] -> [m, 2, 2], R_1 = chol(Sigma_1(0)).
    R_tau = Psi_hat(tau, 1) R_1, Psi_hat the transition of d/dtau = beta A + beta/2 Dbar Sigma_tau^{-1} (spec 2.1)."""
    from scipy.integrate import solve_ivp

    a, dbar = np.array(sde.drift_matrix), np.diag(sde.noise)

    def rhs(tau, y):
        b = _beta(sde, tau)
        return ((b * a + 0.5 * b * dbar @ np.linalg.inv(_cov(sde, tau, None))) @ y.reshape(2, 2)).ravel()

    start = np.linalg.cholesky(_cov(sde, grid[0], None))
    solution = solve_ivp(rhs, (grid[0], grid[-1]), start.ravel(), method="DOP853", rtol=_ODE_RTOL, atol=1e-14,
                         dense_output=True)
    return lambda tau: solution.sol(np.atleast_1d(tau)).T.reshape(-1, 2, 2)


def _lagrange(tau: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Lagrange basis polynomials through `points` [k + 1] evaluated at tau [m]: [k + 1, m]."""
    basis = np.ones((len(points), len(tau)))
    for j, p_j in enumerate(points):
        for m, p_m in enumerate(points):
            if m != j:
                basis[j] *= (tau - p_m) / (p_j - p_m)
    return basis


@functools.lru_cache(maxsize=64)
def _multistep_cached(sde_ref, grid: tuple, order: int, predict: str):
    """Per step t_i -> t_{i+1}: (linear 2x2, [coefficient of the j-th newest prediction], projection at t_i)."""
    sde = sde_ref()
    r_of = _r_factor(sde, grid)
    nodes, weights = np.polynomial.legendre.leggauss(_GAUSS_NODES)
    dbar = np.diag(sde.noise)
    times = np.array(grid)
    steps = []
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
        half = (t - t_next) / 2
        tau = (t + t_next) / 2 + half * nodes
        beta = sde.beta(torch.tensor(tau)).numpy() * np.ones_like(tau)
        basis = _lagrange(tau, times[max(0, i - order):i + 1][::-1])  # newest prediction first
        r_next, r_tau = r_of(t_next)[0], r_of(tau)
        if predict == "x0":
            # du/dtau = (beta A + beta/2 Dbar Sigma^{-1}) u - beta/2 Dbar Sigma^{-1} w x0: exact Psi_hat = R' R^{-1}
            linear = r_next @ np.linalg.inv(r_of(t)[0])
            w_tau = _phi_batch(sde, sde.clock(torch.tensor(tau))).numpy()[:, :, :1]  # [m, 2, 1]
            kernel_w = np.linalg.solve(_kernel_batch(sde, torch.tensor(tau)).numpy(), w_tau)
            forcing = (r_next @ np.linalg.solve(r_tau, 0.5 * beta[:, None, None] * dbar @ kernel_w))[:, :, 0]  # [m, 2]
            # - int_t^{t'} = + int_{t'}^t
            coefficients = [half * np.einsum("m,m,mi->i", weights, b_j, forcing) for b_j in basis]
        else:
            # du/dtau = beta A u + beta/2 Dbar R^{-T} eps: Psi = the backward map of beta A
            linear = np.linalg.inv(_phi(sde, _clock(sde, t) - _clock(sde, t_next)))
            psi_tau = np.linalg.inv(_phi_batch(sde, sde.clock(torch.tensor(tau)) - _clock(sde, t_next)).numpy())
            forcing = psi_tau @ (0.5 * beta[:, None, None] * dbar) @ np.linalg.inv(r_tau).transpose(0, 2, 1)
            coefficients = [-half * np.einsum("m,m,mij->ij", weights, b_j, forcing) for b_j in basis]
        steps.append((linear, coefficients, _projection(sde, t, r_of(t)[0], predict)))
    return steps


def _projection(sde, t: float, r_t: np.ndarray, predict: str) -> np.ndarray:
    """The map from (u, s) to the prediction, one row [4] acting on (x, v, s_x, s_v) (x0) or two rows (eps).
    x0_hat = w^T (Sigma^{-1} u + s) / (w^T Sigma^{-1} w): the generalised least-squares inverse of Tweedie's
    s = -Sigma^{-1}(u - w x0), exact when s is a kernel score; eps_R = -R^T s."""
    if predict == "x0":
        w = _phi(sde, _clock(sde, t))[:, 0]
        pw = np.linalg.solve(_cov(sde, t, None), w)
        return np.concatenate([pw, w])[None, :] / float(w @ pw)
    return np.concatenate([np.zeros((2, 2)), -r_t.T], axis=1)


def _sample_multistep(sde, score_fn, u, ts, order, predict):
    grid = tuple(float(t) for t in torch.as_tensor(ts, dtype=torch.float64))
    history: list = []  # newest prediction first
    for (t, _), (linear, coefficients, projection) in zip(_steps(ts), _multistep_cached(_Ref(sde), grid, order,
                                                                                          predict), strict=True):
        s_x, s_v = sde.split(complete_score(sde, u, score_fn(u, t), t))
        x, v = sde.split(u)
        prediction = [a * x + b * v + c * s_x + d * s_v for a, b, c, d in projection.tolist()]
        history = [prediction, *history][:order + 1]
        x, v = _apply(linear, x, v)
        for coefficient, past in zip(coefficients, history, strict=False):
            if predict == "x0":
                x, v = x + float(coefficient[0]) * past[0], v + float(coefficient[1]) * past[0]
            else:
                dx, dv = _apply(coefficient, *past)
                x, v = x + dx, v + dv
        u = sde.join(x, v)
    return u


CONJUGATE_PREDICTIONS = ("x0", "eps", "eps_cholesky")


def sample_conjugate(sde, score_fn, u: Tensor, ts: Tensor, *, noise=None, denoise: bool = True, predict: str = "x0",
                     order: int = 2, lam: float = 0.0) -> Tensor:
    """The conjugate integrator of the probability-flow ODE, one NFE per step.

    predict 'x0' (default): exponential integrator in the gDDIM factor R with the data prediction x0_hat
        interpolated by a polynomial in t through the last order + 1 steps (Adams-Bashforth; DPM-Solver++(kM)-like).
    predict 'eps': the same on eps_R = -R^T s (gDDIM / DEIS with K = R). Order 0 of either is gDDIM-0 = GE-D
        with sigma_d = 0: exact for a point mass at any step size.
    predict 'eps_cholesky': lambda-DDIM (Pandey, Rudolph & Mandt 2024; B_t = lam I) on the Cholesky eps, order 0
        only; unstable at coarse steps (it is not exact for a point mass), kept to reproduce the comparison.
    order: 0-3 (the first steps use what history there is). lam: only with 'eps_cholesky'. `noise` is unused.
    """
    if predict not in CONJUGATE_PREDICTIONS:
        raise ValueError(f"predict must be one of {CONJUGATE_PREDICTIONS}, got {predict!r}")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam!r}")
    if not (isinstance(order, int) and 0 <= order <= 3):
        raise ValueError(f"order must be an integer in 0..3, got {order!r}")
    if predict == "eps_cholesky":
        if order != 0:
            raise ValueError(f"predict 'eps_cholesky' is order 0 only, got order {order}")
        u = _sample_lambda_ddim(sde, score_fn, u, ts, lam)
    else:
        if lam != 0:
            raise ValueError(f"lam applies to predict 'eps_cholesky' only (got lam {lam} with predict {predict!r})")
        _check(sde)
        u = _sample_multistep(sde, score_fn, u, ts, order, predict)
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
