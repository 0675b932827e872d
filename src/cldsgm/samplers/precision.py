"""The step's precision from the model: an effective data scale sigma_d from the score's own Jacobian.

SSCS's exponential score step integrates a linear part -P v of the score exactly and freezes the rest; it is exact
when P is the score's true stiffness -d s_v / d v. For data N(m, sigma^2) that stiffness is [Sigma_t(sigma^2)^{-1}]_vv,
and by Sherman-Morrison (Sigma_t(sigma^2) = Sigma_t(0) + sigma^2 w w^T, w = Phi(B(t)) e_x)

    P(sigma^2) = P_0 - sigma^2 a^2 / (1 + sigma^2 q),   P_0 = [Sigma_t(0)^{-1}]_vv,  a = (Sigma_t(0)^{-1} w)_v,
                                                         q = w^T Sigma_t(0)^{-1} w,

which is second-order Tweedie with Var(x0 | u_t) in place of sigma^2 (integrators_spec.md 1). Inverting it turns a
measured stiffness into the sigma_d that SSCS's `precision_sigma` expects:

    sigma^2 = (P_0 - P) / (a^2 - (P_0 - P) q).

The same holds for the x block with the xx entries (PSLD noises x too). The stiffness of the block that tells widths
apart (`informative_block`: v for CLD, x for PSLD near the data) is measured by Hutchinson's estimator,
-E[z^T (d s_b / d b) z] / d with Rademacher z on that block, at states u_t ~ p_t made by perturbing data with the
forward kernel: one forward and one backward pass per probe.
A network trained to a finite loss is smoother near the data than the exact score, so its sigma_d is larger than
the data's own; using the data's value then makes the step too stiff (README, "The SSCS flip").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BLOCKS", "SIGMA_MAX", "effective_sigma", "informative_block", "model_sigma_d", "score_stiffness",
           "sigma_from_stiffness", "stiffness_of_sigma"]


BLOCKS = ("x", "v")


def _kernel_terms(sde, t: float, block: str = "v") -> tuple[float, float, float]:
    """(P_0, a, q) of the module docstring for one block (x or v) at time t, float64, exact HSM kernel Sigma_t(0)."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    cov = sde.cov(tt, 0.0, sde.init_v_var)
    det = float(cov.det())
    inv = ((float(cov.vv) / det, -float(cov.xv) / det), (-float(cov.xv) / det, float(cov.xx) / det))
    phi_xx, _, phi_vx, _ = (float(c) for c in sde.transition(sde.clock(tt)))
    inv_w = (inv[0][0] * phi_xx + inv[0][1] * phi_vx, inv[1][0] * phi_xx + inv[1][1] * phi_vx)
    q = phi_xx * inv_w[0] + phi_vx * inv_w[1]
    i = BLOCKS.index(block)
    return inv[i][i], inv_w[i], q


def informative_block(sde, t: float) -> str:
    """The noised block whose stiffness tells data widths apart best: the largest share a^2 / (q P_0) of the point
    mass's stiffness that a wide law removes. CLD: v (x is not noised). PSLD near the data: x (its v-stiffness
    moves 3 % between sigma 0 and infinity at t = 1e-3, its x-stiffness from 12429 to 0.01)."""
    def share(block):
        p0, a, q = _kernel_terms(sde, t, block)
        return a * a / (q * p0)

    noised = [b for b, d in zip(BLOCKS, sde.noise, strict=True) if d > 0]
    return max(noised, key=share)


def stiffness_of_sigma(sde, t: float, sigma: float, block: str = "v") -> float:
    """[Sigma_t(sigma^2)^{-1}]_bb: the stiffness of block b's score for data N(m, sigma^2)."""
    p0, a, q = _kernel_terms(sde, t, block)
    s2 = float(sigma) ** 2
    return p0 - s2 * a * a / (1 + s2 * q)


def sigma_from_stiffness(sde, t: float, stiffness: float, block: str = "v") -> float:
    """The sigma_d whose Gaussian law has this stiffness of block b at time t; 0 for a stiffness at or above the
    point mass's P_0 and inf at or below the limit P_0 - a^2 / q (a score flatter than any Gaussian's)."""
    p0, a, q = _kernel_terms(sde, t, block)
    gap = p0 - float(stiffness)
    if gap <= 0:
        return 0.0
    denominator = a * a - gap * q
    if denominator <= 0:  # guard: beyond every Gaussian's stiffness, sigma -> inf
        return math.inf
    return math.sqrt(gap / denominator)


def score_stiffness(sde, score_fn, x0: Tensor, t: float, *, block: str = "v", probes: int = 2,
                    generator: torch.Generator | None = None) -> tuple[float, float]:
    """-E[z^T (d s_b / d b) z] / d for block b (x or v) at u_t ~ p_t (x0 perturbed by the forward kernel),
    Hutchinson with Rademacher z.

    x0: [B, C, ...] data; returns (mean, standard error over the B x probes per-sample values), per coordinate.
    """
    i = BLOCKS.index(block)
    u = _perturb(sde, x0, t, generator)
    values = []
    for _ in range(probes):
        z = torch.randint(0, 2, u.shape, generator=generator, dtype=u.dtype) * 2 - 1
        z_b = sde.split(z)[i]
        with torch.enable_grad():
            u_in = u.clone().requires_grad_(True)
            s_b = sde.split(score_fn(u_in, torch.tensor(float(t), dtype=torch.float64)))[i]
            (grad,) = torch.autograd.grad((s_b * z_b).sum(), u_in)
        values.append(-(sde.split(grad)[i] * z_b).flatten(1).sum(1) / z_b[0].numel())
    values = torch.cat(values).to(torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def _perturb(sde, x0: Tensor, t: float, generator) -> Tensor:
    """u_t ~ N(mean_t(x0, v0 = 0), Sigma_t(0, gamma M)): the forward process from data (v0 marginalised)."""
    tt = torch.tensor(float(t), dtype=torch.float64)
    phi_xx, _, phi_vx, _ = (float(c) for c in sde.transition(sde.clock(tt)))
    cov = sde.cov(tt, 0.0, sde.init_v_var)
    l_xx = math.sqrt(float(cov.xx))
    l_vx = float(cov.xv) / l_xx
    l_vv = math.sqrt(max(float(cov.vv) - l_vx**2, 0.0))  # guard: rounding can make the Schur complement -0
    e_x = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    e_v = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    return sde.join(phi_xx * x0 + l_xx * e_x, phi_vx * x0 + l_vx * e_x + l_vv * e_v)


def effective_sigma(sde, score_fn, x0: Tensor, times, *, probes: int = 2, seed: int = 0) -> list[dict]:
    """Per time t: the block measured (informative_block), its stiffness (mean, se), the point mass's, and the sigma_d
    they imply (with the sigma_d of stiffness +- 2 se as a range)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in times:
        block = informative_block(sde, t)
        mean, se = score_stiffness(sde, score_fn, x0, t, block=block, probes=probes, generator=generator)
        rows.append({"t": float(t), "block": block, "stiffness": mean, "stiffness_se": se,
                     "point_mass": stiffness_of_sigma(sde, t, 0.0, block),
                     "sigma_d": sigma_from_stiffness(sde, t, mean, block),
                     "sigma_d_low": sigma_from_stiffness(sde, t, mean + 2 * se, block),
                     "sigma_d_high": sigma_from_stiffness(sde, t, mean - 2 * se, block)})
    return rows


# a score flatter than any Gaussian's (a barely trained network: measured 24.8 at t = 1e-3 where the point mass has
# 397 and the diamond 57) gets sigma_d = inf; 10 (ten times the data range [-1, 1]) is the softest Gaussian precision
# to float64 accuracy, the closest the step can come to it
SIGMA_MAX = 10.0


def model_sigma_d(sde, score_fn, x0: Tensor, t_min: float, *, probes: int = 2, seed: int = 0) -> dict:
    """The sigma_d for SSCS's exponential step from this score: the median over t = t_min x {1, 2, 5, 10} (the last
    steps, where the step's stiffness matters; mode mixing raises the value at larger t), rounded to 3 significant
    digits so that a value recomputed on another machine names the same run. Returns {sigma_d, per_time, ...}."""
    times = [t_min * k for k in (1, 2, 5, 10)]
    rows = effective_sigma(sde, score_fn, x0, times, probes=probes, seed=seed)
    values = sorted(min(r["sigma_d"], SIGMA_MAX) for r in rows)
    sigma_d = float(f"{(values[1] + values[2]) / 2:.3g}")
    return {"sigma_d": sigma_d, "method": "hutchinson-jacobian", "n": int(x0.shape[0]), "probes": probes,
            "seed": seed, "t_min": t_min, "per_time": rows}
