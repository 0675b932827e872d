"""Negative log-likelihood through the probability-flow ODE (the CLD paper's likelihood bound, CLD-SGM's likelihood.py).

log p_{t_min}(u_{t_min}) = log p_1(u_1) + int_{t_min}^1 div F(u_t, t) dt, with F = f - g^2 s / 2 the forward
probability-flow velocity and p_1 replaced by the prior. The divergence is exact (one backward pass per state
dimension: low dimension only) or Hutchinson's z^T (dF/du) z with probes drawn once per sample and held fixed
along the trajectory, as in the references; several probes share one ODE solve.

For CLD/PSLD the data are augmented with v ~ q = N(0, gamma M I) and the ODE gives the joint NLL of (x, v);
-log p(x) <= E_q[-log p(x, v)] - H[q], with H[q] = D/2 (1 + log 2 pi + log gamma M) analytic (negative for
small gamma M). One v per sample gives an unbiased estimate of this bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cldsgm.catalog import PROBES
from cldsgm.samplers.grids import check_t_min
from cldsgm.samplers.noise import CountingScore, PerSampleNoise, sample_seeds
from cldsgm.samplers.ode import integrate
from cldsgm.sde import PhaseSpaceSDE

__all__ = ["LikelihoodResult", "bits_per_dim", "dequantize", "ode_likelihood", "velocity_entropy"]



@dataclass(frozen=True)
class LikelihoodResult:
    """nll_nats: [B] NLL of x in nats (for CLD/PSLD the upper bound); bpd: [B] or None; nfe: score calls;
    probes: Hutchinson probes per sample (0 for the exact divergence); probe_var: [B] the variance over an item's
    probes of its NLL in nats (ddof 1; None with fewer than 2 probes): the estimator's own noise, apart from the
    data's."""

    nll_nats: Tensor
    bpd: Tensor | None
    nfe: int
    probes: int
    probe_var: Tensor | None = None


def bits_per_dim(nll_nats: Tensor, dims: int, offset: float = 7.0) -> Tensor:
    """bpd = nll / (D ln 2) + offset. offset 7 = log2(128) maps [-1, 1] data to 8-bit bins; use 8 for [0, 1]."""
    return nll_nats / (dims * math.log(2.0)) + offset


def dequantize(images: Tensor, *, generator: torch.Generator | None = None, uniforms: Tensor | None = None) -> Tensor:
    """uint8 images -> 2 (k + U) / 256 - 1 in [-1, 1), float32 (uniform dequantisation), U ~ U[0, 1) drawn from
    `generator`, or given as `uniforms` (shaped like images; the sum is formed in their dtype, then cast)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"dequantize expects uint8 pixel values, got {images.dtype}")
    u = uniforms if uniforms is not None else torch.rand(images.shape, generator=generator, dtype=torch.float32,
                                                           device=images.device)
    return (2.0 * (images.to(u.dtype) + u) / 256.0 - 1.0).to(torch.float32)


def velocity_entropy(sde: PhaseSpaceSDE, dims: int) -> float:
    """H[N(0, gamma M I_D)] in nats."""
    return 0.5 * dims * (1.0 + math.log(2 * math.pi) + math.log(sde.init_v_var))


def _divergence(velocity: Tensor, u: Tensor, probes: Tensor | None) -> Tensor:
    """[B, P] Hutchinson estimates z^T J z for probes [P, B, ...], or [B, 1] exact trace when probes is None."""
    if probes is None:
        flat_v, flat_u = velocity.flatten(1), u
        diag = [torch.autograd.grad(flat_v[:, i].sum(), flat_u, retain_graph=True)[0].flatten(1)[:, i]
                for i in range(flat_v.shape[1])]
        return torch.stack(diag, dim=1).sum(1, keepdim=True)
    estimates = []
    for z in probes:
        (jz,) = torch.autograd.grad((velocity * z).sum(), u, retain_graph=True)
        estimates.append((jz * z).flatten(1).sum(1))
    return torch.stack(estimates, dim=1)


def ode_likelihood(sde, score_fn, x: Tensor, *, t_min: float = 1e-5, probes: str = "rademacher", n_probes: int = 1,
                   rtol: float = 1e-5, atol: float = 1e-5, method: str = "scipy_rk45", seed: int = 0,
                   first_index: int = 0, bpd_offset: float | None = None) -> LikelihoodResult:
    """NLL of data x ([B, C, ...], already scaled/dequantised) under the model given by score_fn.

    score_fn(u, t) must be differentiable in u. The data sit at t = t_min (1e-5 in the references). v (CLD/PSLD)
    and the probes come from per-sample seeds (seed, first_index + i). bpd_offset: None reports nats only
    (toy data); 7 for [-1, 1] image data.
    """
    check_t_min(t_min)
    if probes not in PROBES:
        raise ValueError(f"probes must be one of {PROBES}, got {probes!r}")
    if probes != "exact" and (not isinstance(n_probes, int) or n_probes < 1):
        raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}")
    batch, dims = x.shape[0], x[0].numel()
    noise = PerSampleNoise(sample_seeds(seed, first_index, batch, device=x.device))
    u0 = x
    if isinstance(sde, PhaseSpaceSDE):
        u0 = sde.join(x, math.sqrt(sde.init_v_var) * noise.like(x))
    probe_set = None
    if probes != "exact":
        draws = [noise.like(u0) for _ in range(n_probes)]
        probe_set = torch.stack([torch.sign(z) if probes == "rademacher" else z for z in draws])
    counting = CountingScore(score_fn)
    shape, n_state = u0.shape, u0.numel()

    def rhs(t: Tensor, y: Tensor) -> Tensor:  # t: forward time, float64, inside [t_min, 1]
        with torch.enable_grad():  # the scipy wrapper calls us under no_grad
            u = y[:n_state].reshape(shape).detach().requires_grad_(True)
            velocity = -sde.reverse_drift(u, t, counting(u, t), probability_flow=True)
            div = _divergence(velocity, u, probe_set)
        return torch.cat([velocity.detach().reshape(-1), div.detach().reshape(-1)])

    n_div = batch * (1 if probe_set is None else n_probes)
    y0 = torch.cat([u0.reshape(-1), torch.zeros(n_div, dtype=u0.dtype, device=u0.device)])
    span = torch.tensor([t_min, 1.0], dtype=u0.dtype, device=u0.device)
    y1 = integrate(rhs, y0, span, rtol=rtol, atol=atol, method=method)
    u1, integrated_div = y1[:n_state].reshape(shape), y1[n_state:].reshape(batch, -1)
    nll = -(sde.prior_logp(u1) + integrated_div.mean(1))
    if isinstance(sde, PhaseSpaceSDE):
        nll = nll - velocity_entropy(sde, dims)
    bpd = None if bpd_offset is None else bits_per_dim(nll, dims, bpd_offset)
    # each probe's divergence is integrated on its own: an item's NLL per probe differs in that term alone
    probe_var = integrated_div.var(1) if integrated_div.shape[1] > 1 else None
    return LikelihoodResult(nll, bpd, counting.nfe, 0 if probe_set is None else n_probes, probe_var)
