"""The step's precision from the model: an effective data scale sigma_d from the score's own Jacobian.

SSCS's exponential score step integrates a linear part -P v of the score exactly and freezes the rest; it is exact
when P is the score's true stiffness -d s_v / d v. For data N(m, sigma^2) that stiffness is [Sigma_t(sigma^2)^{-1}]_vv,
and by Sherman-Morrison (Sigma_t(sigma^2) = Sigma_t(0) + sigma^2 w w^T, w = Phi(B(t)) e_x)

    P(sigma^2) = P_0 - sigma^2 a^2 / (1 + sigma^2 q),   P_0 = [Sigma_t(0)^{-1}]_vv,  a = (Sigma_t(0)^{-1} w)_v,
                                                         q = w^T Sigma_t(0)^{-1} w,

which is second-order Tweedie with Var(x0 | u_t) in place of sigma^2 (docs/samplers.md). Inverting it turns a
measured stiffness into the sigma_d that SSCS's `precision_sigma` expects:

    sigma^2 = (P_0 - P) / (a^2 - (P_0 - P) q).

The same holds for the x block with the xx entries (PSLD noises x too). The block measured is the one that tells
widths apart (`informative_block`: v for CLD, x for PSLD near the data), at states u_t ~ p_t made by perturbing data
with the forward kernel. Data with several scales (an image's pixels: digits' principal stds run from 1.7 down to
nearly 0) have a stiffness per direction, and one scalar P must serve them all: SSCS needs the softest one
(`softest_stiffness`, Lanczos on K; 30 forward and backward passes), not the mean over directions
(`score_stiffness`, Hutchinson's trace estimate), which the many stiff directions dominate (docs/samplers.md,
"The SSCS flip").
A network trained to a finite loss is smoother near the data than the exact score, so its sigma_d is larger than
the data's own; using the data's value then makes the step too stiff.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BLOCKS", "ESTIMATE_TIMES", "METHOD", "SIGMA_MAX", "data_sigma_max", "effective_sigma", "informative_block",
           "model_sigma_d", "score_stiffness", "sigma_from_stiffness", "softest_stiffness", "stiffness_of_sigma"]


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


def _stiffness_times(sde, score_fn, u: Tensor, t: float, block_index: int, z_b: Tensor) -> Tensor:
    """-z_b^T (d s_b / d u) restricted to block b: K z_b per sample, shaped like z_b (one forward and one backward
    pass; for a conservative score z^T J = J z)."""
    with torch.enable_grad():
        u_in = u.clone().requires_grad_(True)
        s_b = sde.split(score_fn(u_in, torch.tensor(float(t), dtype=torch.float64)))[block_index]
        (grad,) = torch.autograd.grad((s_b * z_b).sum(), u_in)
    return -sde.split(grad)[block_index].detach()


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
        values.append((_stiffness_times(sde, score_fn, u, t, i, z_b) * z_b).flatten(1).sum(1) / z_b[0].numel())
    values = torch.cat(values).to(torch.float64)
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def softest_stiffness(sde, score_fn, x0: Tensor, t: float, *, block: str = "v", iterations: int = 20,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """The smallest eigenvalue of block b's stiffness K = -d s_b / d b at u_t ~ p_t, per sample: Lanczos (with full
    reorthogonalisation) on K, min(iterations, d) products z^T J by autograd; the smallest Ritz value of the Krylov
    space, which converges to K's softest direction -- the one that carries the data's largest spread -- far faster
    than power iteration when the soft eigenvalues crowd (wide laws all have stiffness near P_0 - a^2 / q).

    x0: [B, C, ...] data; returns (median, standard error) over the B per-sample values, per coordinate (the median:
    a few samples between modes must not move it; se from the mean's spread, for a range).
    """
    i = BLOCKS.index(block)
    u = _perturb(sde, x0, t, generator)
    block_shape = sde.split(u)[i].shape

    def stiffness_times(z: Tensor) -> Tensor:  # K z per sample, flat [B, d] in float64
        return _stiffness_times(sde, score_fn, u, t, i, z.view(block_shape)).flatten(1).to(torch.float64)

    def unit(w: Tensor) -> Tensor:
        return w / w.norm(dim=1, keepdim=True)

    def fresh(basis: list[Tensor]) -> Tensor:  # a random direction orthogonal to the Krylov space so far
        w = torch.randn(basis[0].shape, generator=generator, dtype=torch.float64)
        for q_k in basis:
            w = w - (w * q_k).sum(1, keepdim=True) * q_k
        return unit(w)

    dim = sde.split(u)[i][0].numel()
    basis = [unit(torch.randn(len(u), dim, generator=generator, dtype=torch.float64))]
    alphas, betas = [], []
    for j in range(min(iterations, dim)):
        w = stiffness_times(basis[-1].to(u.dtype))
        alphas.append((w * basis[-1]).sum(1))
        for _ in range(2):  # full reorthogonalisation, twice (Gram-Schmidt's loss of orthogonality would let
            for q_k in basis:  # converged directions back in and put Ritz values outside K's spectrum)
                w = w - (w * q_k).sum(1, keepdim=True) * q_k
        if j + 1 == min(iterations, dim):
            break
        beta = w.norm(dim=1)
        # guard: an exhausted Krylov space (an eigenvector hit) continues in a fresh direction, coupling 0
        exhausted = beta <= 1e-10 * alphas[0].abs().clamp_min(1.0)
        betas.append(torch.where(exhausted, torch.zeros_like(beta), beta))
        basis.append(torch.where(exhausted[:, None], fresh(basis), w / beta.clamp_min(1e-300)[:, None]))
    tridiagonal = torch.diag_embed(torch.stack(alphas, 1))
    if betas:
        off = torch.diag_embed(torch.stack(betas, 1), offset=1)
        tridiagonal = tridiagonal + off + off.transpose(1, 2)
    values = torch.linalg.eigvalsh(tridiagonal)[:, 0]
    return float(values.median()), float(values.std() / math.sqrt(len(values)))


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


def effective_sigma(sde, score_fn, x0: Tensor, times, *, reading: str = "softest", probes: int = 2,
                    iterations: int = 20, seed: int = 0) -> list[dict]:
    """Per time t: the block measured (informative_block), its stiffness (mean, se), the point mass's, and the sigma_d
    they imply (with the sigma_d of stiffness +- 2 se as a range).

    reading: "softest" (the smallest eigenvalue, softest_stiffness: what SSCS's step needs) or "mean" (Hutchinson's
    trace estimate, score_stiffness: dominated by the stiff directions; too stiff on the digits).
    """
    if reading not in ("softest", "mean"):
        raise ValueError(f"reading must be 'softest' or 'mean', got {reading!r}")
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in times:
        block = informative_block(sde, t)
        if reading == "softest":
            mean, se = softest_stiffness(sde, score_fn, x0, t, block=block, iterations=iterations,
                                         generator=generator)
        else:
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


# the times of the estimate, in units of t_min: the last steps of a quadratic grid at NFE 10-50 (t 0.011 and 0.041 at
# NFE 10), where the step's precision decides how far v moves; at t ~ t_min a trained network is stiff in every
# direction (digits_cld: sigma 0.008 at 1e-3, flatter than any Gaussian from 5e-3 on) and says little about the steps
ESTIMATE_TIMES = (10, 20, 50)
METHOD = "softest-direction-capped"  # model_sigma_d's name in the manifest and the cache key


def data_sigma_max(x0: Tensor) -> float:
    """The data's largest principal std: the top singular value of the centred batch x0 [B, ...] over sqrt(B - 1)."""
    flat = x0.flatten(1).to(torch.float64)
    return float(torch.linalg.svdvals(flat - flat.mean(0))[0]) / math.sqrt(max(len(flat) - 1, 1))


def model_sigma_d(sde, score_fn, x0: Tensor, t_min: float, *, iterations: int = 30, seed: int = 0) -> dict:
    """The sigma_d for SSCS's exponential step from this score: the softest direction's stiffness (softest_stiffness)
    turned into a sigma_d, the median over t = t_min x ESTIMATE_TIMES, capped at the data's largest principal std
    (data_sigma_max), rounded to 3 significant digits so that a value recomputed on another machine names the same
    run. Returns {sigma_d, per_time, data_sigma_max, ...}.

    Why the softest direction: a scalar precision P stiffer than the score along a direction makes the step move v
    only a fraction of the way there (sluggish, samples over-dispersed along the data's largest spread), while P
    softer than the score along a stiff direction leaves the rest to the Euler part of the step, as the reference
    SSCS does everywhere. The mean stiffness (the estimator before) sits at the many stiff directions of image data.
    Why the cap: where modes overlap, the log-density is not concave between them and its softest direction is
    flatter than any Gaussian; the Gaussian with the data's own second moments is the softest law the step should
    assume (the diamond with component std 0.2: uncapped 1.1, SW2 0.085 at NFE 10, worse than the reference SSCS).
    """
    times = [t_min * k for k in ESTIMATE_TIMES]
    rows = effective_sigma(sde, score_fn, x0, times, reading="softest", iterations=iterations, seed=seed)
    values = sorted(min(r["sigma_d"], SIGMA_MAX) for r in rows)
    cap = data_sigma_max(x0)
    sigma_d = float(f"{min(values[len(values) // 2], cap):.3g}")
    return {"sigma_d": sigma_d, "method": METHOD, "n": int(x0.shape[0]), "iterations": iterations, "seed": seed,
            "t_min": t_min, "data_sigma_max": cap, "per_time": rows}
