"""Fixed-step samplers of the reverse-time SDE: Euler-Maruyama, SSCS and predictor-corrector.

All share one signature, sample_<name>(sde, score_fn, u, ts, *, noise, ...) -> u:
    sde:      the forward process; score_fn(u, t) -> score shaped like u (t a float64 0-d tensor).
    u:        [B, n_state_channels, ...] a draw from the prior.
    ts:       forward times t_0 = 1 > ... > t_n = t_min (samplers.grids.time_grid), float64.
    noise:    a samplers.noise.PerSampleNoise; each sampler draws from it in a fixed order.
    denoise:  finish with one noise-free Euler step of the reverse SDE from t_min to 0 (the references' default).
Steps run in reverse time: a step from t_i to t_{i+1} has size dt = t_i - t_{i+1} > 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cldsgm import catalog
from cldsgm.sde import VPSDE, PhaseSpaceSDE
from cldsgm.sde._broadcast import per_sample

__all__ = ["denoise_step", "sample_em", "sample_euler_ode", "sample_pc", "sample_sscs"]


def _steps(ts: Tensor):
    ts = torch.as_tensor(ts, dtype=torch.float64)
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        yield t, float(t - t_next)


def denoise_step(sde, score_fn, u: Tensor, t_min: Tensor, *, probability_flow: bool = False) -> Tensor:
    """One noise-free Euler step from forward time t_min to 0 (one NFE), with the reverse-SDE drift -f + g^2 s
    (CLD-SGM, Score-SDE) or, with probability_flow, the ODE's -f + g^2 s / 2 (PSLD's ODE sampler)."""
    t_min = torch.as_tensor(t_min, dtype=torch.float64)
    drift = sde.reverse_drift(u, t_min, score_fn(u, t_min), probability_flow=probability_flow)
    return u + drift * float(t_min)


def _finish(sde, score_fn, u, ts, denoise):
    return denoise_step(sde, score_fn, u, ts[-1]) if denoise else u


def _em_step(sde, score_fn, u: Tensor, t: Tensor, dt: float, noise) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE: u + [-f + g^2 s] dt + g sqrt(dt) z (one NFE, one draw)."""
    drift = sde.reverse_drift(u, t, score_fn(u, t))
    return u + drift * dt + sde.diffusion(t, u) * math.sqrt(dt) * noise.like(u)


def sample_em(sde, score_fn, u: Tensor, ts: Tensor, *, noise, denoise: bool = True) -> Tensor:
    """Euler-Maruyama on the reverse SDE, for VPSDE, CLD and PSLD."""
    for t, dt in _steps(ts):
        u = _em_step(sde, score_fn, u, t, dt, noise)
    return _finish(sde, score_fn, u, ts, denoise)


def sample_euler_ode(sde, score_fn, u: Tensor, ts: Tensor, *, noise=None, denoise: bool = True) -> Tensor:
    """Euler steps on the probability-flow ODE, du = [-f + g^2 s / 2] dt in reverse time: the first-order
    deterministic baseline of the integrator benchmark (one NFE per step). `noise` is unused."""
    for t, dt in _steps(ts):
        u = u + sde.reverse_drift(u, t, score_fn(u, t), probability_flow=True) * dt
    return _finish(sde, score_fn, u, ts, denoise)


PC_STEP_SIZES = ("noise", "sample")


def sample_pc(sde, score_fn, u: Tensor, ts: Tensor, *, noise, denoise: bool = True, snr: float = 0.16,
              n_corrector: int = 1, step_size: str = "noise") -> Tensor:
    """Predictor-corrector for VPSDE (Song et al. 2021): Langevin corrector steps, then an EM predictor step.

    The corrector step is eps = 2 alpha snr^2 |z|^2 / |s|^2 in Score-SDE, with the norms averaged over the batch.
    Averages over a batch would make a sample depend on its batch, so:
    step_size 'noise' (default): eps = 2 alpha snr^2 sigma_t^2, sigma_t^2 = 1 - e^{-2 int beta} the kernel variance:
        Score-SDE's rule where |s|^2 = |eps_hat|^2 / sigma_t^2 with |eps_hat|^2 ~ d (high dimension, and every
        regime where the noise is identifiable from x_t); per sample, and independent of the batch.
    step_size 'sample': the ratio with each sample's own norms. In low dimension |z| and |s|
        of one sample are heavy-tailed (|s| ~ 0 at a mode's centre makes eps blow up): on the 2-D diamond its error
        grows with NFE (quadratic NFE 19 / 49 / 99 / 199: 0.037 / 0.086 / 0.103 / 0.291 sliced W2) where the
        batch-averaged rule gives 0.046 / 0.020 / 0.018 / 0.017 and 'noise' 0.046 / 0.019 / 0.018 / 0.015.
    Score-SDE's alpha = 1 - beta(t) dt turns negative on coarse grids (beta = 20, dt = 0.3), so alpha =
    exp(-int beta over the step), equal to first order and always in (0, 1).
    NFE = n_steps (1 + n_corrector) + denoising.
    """
    if not isinstance(sde, VPSDE):
        raise ValueError(f"the predictor-corrector sampler is defined for VPSDE only, not {type(sde).__name__}")
    if snr <= 0 or n_corrector < 0:
        raise ValueError(f"need snr > 0 and n_corrector >= 0, got snr={snr!r}, n_corrector={n_corrector!r}")
    if step_size not in PC_STEP_SIZES:
        raise ValueError(f"step_size must be one of {PC_STEP_SIZES}, got {step_size!r}")
    for t, dt in _steps(ts):
        alpha = math.exp(-float(sde.schedule.integral_between(t - dt, t)))
        for _ in range(n_corrector):
            grad, z = score_fn(u, t), noise.like(u)
            if step_size == "noise":
                step = torch.full((u.shape[0],), 2 * alpha * snr**2 * float(sde.var(t, 0.0)), dtype=u.dtype,
                                  device=u.device)
            else:
                # clamp: a zero score (an untrained net) would otherwise divide by zero
                grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
                step = 2 * alpha * (snr * z.flatten(1).norm(dim=1) / grad_norm) ** 2
            u = u + per_sample(step, u) * grad + per_sample(torch.sqrt(2 * step), u) * z
        u = _em_step(sde, score_fn, u, t, dt, noise)
    return _finish(sde, score_fn, u, ts, denoise)


def _phi1(z: float) -> float:
    """(e^z - 1) / z, with its limit 1 at z = 0 (expm1 keeps small z exact)."""
    return math.expm1(z) / z if abs(z) > 1e-12 else 1.0


class _SSCS:
    """One SSCS step: exact OU half-step, score step, exact OU half-step (the CLD paper, Sec. 3.4 and Alg. 1;
    PSLD's sscs_sde)."""

    def __init__(self, sde: PhaseSpaceSDE, score_fn, noise, *, score_time, score_step, second_half, num_stab,
                 precision_sigma=0.0):
        self.sde, self.ou, self.score_fn, self.noise = sde, sde.splitting_ou(), score_fn, noise
        self.score_time, self.score_step, self.second_half = score_time, score_step, second_half
        self.num_stab, self.precision_sigma = num_stab, precision_sigma
        self.inv_stationary = (1.0, 1.0 / sde.mass)  # Sigma_inf^{-1} = diag(1, 1/M)

    def half_step(self, u: Tensor, clock: Tensor) -> Tensor:
        """Exact solution of du = A~ u dB + Dbar^(1/2) dW over a clock interval: mean map plus Gaussian noise."""
        phi_xx, phi_xv, phi_vx, phi_vv = (float(c) for c in self.ou.transition(clock))
        factor = self.ou.added_cov(clock).add_diag(self.num_stab).factor("lower")
        x, v = self.sde.split(u)
        e_x, e_v = self.sde.split(self.noise.like(u))
        n_x, n_v = factor.matvec(e_x, e_v)  # 0-d float64 factor entries keep the data's dtype
        return self.sde.join(phi_xx * x + phi_xv * v + n_x, phi_vx * x + phi_vv * v + n_v)

    def score_update(self, u: Tensor, t: Tensor, dt: float) -> Tensor:
        """du = beta Dbar (s + Sigma_inf^{-1} u) dtau on the noised blocks, by Euler or exponentially."""
        if self.score_step == "exponential" and self.precision_sigma > 0:
            return self.score_update_data_aware(u, t, dt)
        score = self.score_fn(u, t)
        beta = float(self.sde.beta(t))
        blocks, scores = list(self.sde.split(u)), self.sde.split(score)
        if self.score_step == "exponential":
            cov = self.sde.perturbation_cov(t, "hsm")
            precision = (float(cov.vv / cov.det()), float(cov.xx / cov.det()))  # diagonal of Sigma_t^{-1}
        for i, (d, inv_inf) in enumerate(zip(self.sde.noise, self.inv_stationary, strict=True)):
            if d == 0:
                continue
            if self.score_step == "euler":
                blocks[i] = blocks[i] + dt * beta * d * (scores[i] + inv_inf * blocks[i])
            else:
                # s = -P z + r: integrate the stiff linear part exactly, freeze the residual r.
                rate = beta * d * (precision[i] - inv_inf)
                residual = scores[i] + precision[i] * blocks[i]
                blocks[i] = math.exp(-rate * dt) * blocks[i] + dt * _phi1(-rate * dt) * beta * d * residual
        return self.sde.join(*blocks)

    def score_update_data_aware(self, u: Tensor, t: Tensor, dt: float) -> Tensor:
        """The exponential score step with the full 2x2 precision Pi = Sigma_t(sigma_d^2)^{-1} of the kernel of data
        N(m, sigma_d^2) (docs/samplers.md): with s = -Pi u + r and r frozen over the step,
            u <- e^{-hG} u + h phi1(-hG) beta Dbar r,   G = beta Dbar (Pi - Sigma_inf^{-1}),
        exact for Gaussian data of that width, hence second order (Strang) where the point-mass precision
        (sigma_d = 0) leaves SSCS first order. For CLD (x not noised) it reduces to the scalar
        P = [Pi]_vv form; PSLD needs the full matrix."""
        score = self.score_fn(u, t)
        pi = self._precision(t)
        propagator, forcing = self._exponential_coefficients(t, dt, pi)
        x, v = self.sde.split(u)
        s_x, s_v = self.sde.split(score)
        r_x, r_v = s_x + pi[0][0] * x + pi[0][1] * v, s_v + pi[1][0] * x + pi[1][1] * v
        (e00, e01), (e10, e11) = propagator
        (f00, f01), (f10, f11) = forcing
        return self.sde.join(e00 * x + e01 * v + f00 * r_x + f01 * r_v, e10 * x + e11 * v + f10 * r_x + f11 * r_v)

    def _precision(self, t: Tensor) -> tuple[tuple[float, float], tuple[float, float]]:
        cov = self.sde.cov(t, self.precision_sigma**2, self.sde.init_v_var)
        det = float(cov.det())
        return ((float(cov.vv) / det, -float(cov.xv) / det), (-float(cov.xv) / det, float(cov.xx) / det))

    def _exponential_coefficients(self, t: Tensor, h: float, precision):
        """e^{-hG} and h phi1(-hG) beta Dbar as 2x2 nested tuples, from one 4x4 exponential in float64:
        expm([[-hG, hI], [0, 0]]) = [[e^{-hG}, h phi1(-hG)], [0, I]]."""
        beta = float(self.sde.beta(t))
        d = torch.diag(torch.tensor(self.sde.noise, dtype=torch.float64))
        pi = torch.tensor(precision, dtype=torch.float64)
        g = beta * d @ (pi - torch.diag(torch.tensor(self.inv_stationary, dtype=torch.float64)))
        block = torch.zeros(4, 4, dtype=torch.float64)
        block[:2, :2], block[:2, 2:] = -h * g, h * torch.eye(2, dtype=torch.float64)
        exp = torch.linalg.matrix_exp(block)
        forcing = exp[:2, 2:] @ (beta * d)
        return tuple(map(tuple, exp[:2, :2].tolist())), tuple(map(tuple, forcing.tolist()))

    def step(self, u: Tensor, t: Tensor, dt: float) -> Tensor:
        schedule = self.sde.schedule
        t_mid = t - dt / 2
        u = self.half_step(u, schedule.integral_between(t_mid, t))
        u = self.score_update(u, t if self.score_time == "start" else t_mid, dt)
        t_lo = t_mid - dt / 2 if self.second_half == "exact" else t_mid  # 'reference' reuses [t_mid, t]
        t_hi = t_mid if self.second_half == "exact" else t
        return self.half_step(u, schedule.integral_between(t_lo.clamp_min(0.0), t_hi))


def sample_sscs(sde, score_fn, u: Tensor, ts: Tensor, *, noise, denoise: bool = True,
                score_time: str = "midpoint", score_step: str = "exponential", second_half: str = "exact",
                num_stab: float = 0.0, precision_sigma: float = 0.0) -> Tensor:
    """Symmetric splitting CLD sampler (Dockhorn et al. 2022, Alg. 1), and its PSLD generalisation.

    Each step: exact OU/Hamiltonian half-step, one score step (one NFE), exact half-step.
    score_time: 'start' evaluates the score at the step's start (the reference), 'midpoint' after the
        first half-step, where the state actually is.
    score_step: 'euler' (the reference) or 'exponential' (linear part -P_t u of the score integrated exactly,
        P_t the diagonal precision of the HSM kernel; stable where the Euler step is stiff near the data).
    second_half: 'exact' uses [t - dt, t - dt/2] for the second half-step; 'reference' reuses the first
        half-interval as the reference code does (identical for constant beta).
    num_stab: added to the half-step covariance diagonal (the reference's sscs_num_stab, default 0).
    precision_sigma: sigma_d >= 0, the local data scale for the exponential score step. 0 (the default) uses the
        point-mass (HSM kernel) precision: first order with a large constant near the data. sigma_d > 0 uses the
        full precision of the kernel of N(m, sigma_d^2) data: second order; robust within about 2x of the local
        data std (0.04 for the diamond); too large under-disperses (docs/samplers.md).
    """
    if not isinstance(sde, PhaseSpaceSDE):
        raise ValueError(f"SSCS needs a phase-space SDE (CLD or PSLD), not {type(sde).__name__}")
    spec = catalog.sampler("sscs")
    for name, value in (("score_time", score_time), ("score_step", score_step), ("second_half", second_half)):
        allowed = spec.option(name).choices
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if not precision_sigma >= 0:
        raise ValueError(f"precision_sigma must be >= 0, got {precision_sigma!r}")
    stepper = _SSCS(sde, score_fn, noise, score_time=score_time, score_step=score_step, second_half=second_half,
                    num_stab=num_stab, precision_sigma=precision_sigma)
    for t, dt in _steps(ts):
        u = stepper.step(u, t, dt)
    return _finish(sde, score_fn, u, ts, denoise)
