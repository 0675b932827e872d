"""What the papers argue from besides sample quality, measured: how smooth a score is over t, how noisy the gradient
of the HSM and DSM objectives is, and how close the forward process comes to its equilibrium.

Each function returns per-item values and the bootstrap replicates of its statistic (resampled with
cldsgm.stats.resample_counts, so that two measurements of one seed and size are paired), for one record each.

- `score_jacobian` (CLD paper, Sec. 3: only v is noised, so p(v | x) stays close to Gaussian and the network's task
  is smoother): the Jacobian of the score's noised blocks with respect to the state, its mean squared norm per
  output element relative to the prior's score (1 at equilibrium), at u_t ~ p_t on a log grid of t; the record
  is the mean over t of log10 of its square root (0: as smooth as the prior; 2: a hundred times stiffer).
- `objective_gradients` (CLD paper, Sec. 3.2 and App. C): the per-example gradient of the score-matching loss in
  score space with the likelihood weighting, whose HSM and DSM forms differ by a constant, at one network; the
  record is the trace of the gradient's covariance over examples (what one SGD step's noise is made of).
- `prior_kl` (CLD paper, Sec. 3.1): KL(p_t || prior) of a Gaussian-mixture data law, by Monte Carlo over exact
  log-densities of the perturbed mixture; the record is the time at which it falls below 0.01 nats (at t = 1 both
  papers' processes are within 1e-7 nats of their priors, below the Monte Carlo noise: the end says nothing about
  the speed).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cldsgm.sde import PhaseSpaceSDE

__all__ = ["SMOOTHNESS_TIMES", "objective_gradients", "prior_kl", "score_jacobian"]

# log-spaced from the samplers' t_min (1e-3) to 1: where a sampler evaluates the score
SMOOTHNESS_TIMES = tuple(float(t) for t in np.logspace(-3, 0, 10))


def _perturbed(sde, x0: Tensor, t: float, generator: torch.Generator) -> Tensor:
    """u_t ~ p(u_t | x0) (v0 marginalised for phase space): [B, state channels, ...]."""
    tt = torch.full((x0.shape[0],), float(t), dtype=torch.float64)
    objective = "hsm" if isinstance(sde, PhaseSpaceSDE) else "dsm"
    return sde.perturb(x0, tt, objective, generator=generator).u


def _noised(sde, score: Tensor) -> Tensor:
    """The blocks of a state-shaped score that the SDE noises (what a network learns), flattened [B, d_out]."""
    return sde.noise_target(score).flatten(1) if isinstance(sde, PhaseSpaceSDE) else score.flatten(1)


def _jacobian_norms(sde, score_fn, u: Tensor, t: float, z: Tensor) -> Tensor:
    """[B] |z^T d s_out / d u|^2 / d_out for a Rademacher z over the output blocks: an unbiased estimate of the
    mean squared row norm of the Jacobian (one forward and one backward pass)."""
    with torch.enable_grad():
        u_in = u.detach().clone().requires_grad_(True)
        out = _noised(sde, score_fn(u_in, torch.tensor(float(t), dtype=torch.float64)))
        (grad,) = torch.autograd.grad((out * z).sum(), u_in)
    return grad.flatten(1).pow(2).sum(1).to(torch.float64) / z.shape[1]


def score_jacobian(sde, score_fn, x0: Tensor, *, times=SMOOTHNESS_TIMES, seed: int = 0,
                   counts: np.ndarray | None = None) -> dict:
    """The score's Jacobian norm relative to the prior's, over t.

    x0: [n, ...] data (images in [-1, 1]). Returns {'value': mean_t log10 sqrt(R(t)), 'per_time': [{t, ratio}],
    'replicates' (with counts [B, n])}, where R(t) = mean_i |z_i^T J_i|^2 / mean_i |z_i^T J_prior|^2 with the same
    probes z_i for the network and the prior's exact score (-Sigma_inf^{-1} u).
    """
    generator = torch.Generator().manual_seed(seed)
    learned, prior = [], []
    for t in times:
        u = _perturbed(sde, x0, t, generator)
        width = _noised(sde, u).shape[1]
        z = (torch.randint(0, 2, (u.shape[0], width), generator=generator) * 2 - 1).to(u.dtype)
        learned.append(_jacobian_norms(sde, score_fn, u, t, z))
        prior.append(_jacobian_norms(sde, lambda w, _t: sde.prior_score(w), u, t, z))
    learned_m, prior_m = torch.stack(learned, 1).numpy(), torch.stack(prior, 1).numpy()  # [n, T]

    def statistic(weights: np.ndarray) -> np.ndarray:  # weights [..., n] -> [...]
        return (0.5 * np.log10((weights @ learned_m) / (weights @ prior_m))).mean(-1)

    ratio = learned_m.mean(0) / prior_m.mean(0)
    out = {"value": float(statistic(np.full(len(learned_m), 1.0 / len(learned_m)))),
           "per_time": [{"t": float(t), "ratio": float(r)} for t, r in zip(times, ratio, strict=True)]}
    if counts is not None:
        out["replicates"] = statistic(counts / len(learned_m))
    return out


def _score_space_loss(sde, score: Tensor, target: Tensor, t: Tensor) -> Tensor:
    """[B] the likelihood-weighted loss sum_blocks g^2/2 |s - target|^2 on the noised blocks (sum over elements)."""
    from cldsgm.losses import _per_block

    error = sde.noise_target(score - target) if isinstance(sde, PhaseSpaceSDE) else score - target
    return _per_block(sde, sde.half_g2(t), error**2).flatten(1).sum(1)


def objective_gradients(sde, net, param, x0: Tensor, *, objectives=("hsm", "dsm"), t_min: float = 1e-5,
                        seed: int = 0, counts: np.ndarray | None = None) -> dict:
    """Per objective: the trace of the covariance of per-example gradients of the score-space loss at the network
    `net` (its score read by `param`, cldsgm.models.score.ScoreParameterisation, as it was trained).

    x0: [n, ...] data. Each example i has its time t_i ~ U[t_min, 1], the same for every objective; u_t is drawn from
    that objective's kernel (HSM: p(u_t | x0); DSM: p(u_t | x0, v0) with v0 ~ N(0, gamma M)), whose score is the
    target. Returns {objective: {'value', 'loss_mean', 'loss_var', 'replicates' (with counts)}}.
    """
    generator = torch.Generator().manual_seed(seed)
    t = t_min + (1.0 - t_min) * torch.rand(len(x0), generator=generator, dtype=torch.float64)
    params = [p for p in net.parameters() if p.requires_grad]
    score_fn = param.score_fn(net)
    out = {}
    for objective in objectives:
        perturbed = sde.perturb(x0, t, objective, generator=generator)
        target = sde.score_from_eps(sde.noise_target(perturbed.eps) if isinstance(sde, PhaseSpaceSDE)
                                    else perturbed.eps, t, objective)
        grads, losses = [], []
        for i in range(len(x0)):
            with torch.enable_grad():
                loss = _score_space_loss(sde, score_fn(perturbed.u[i:i + 1], t[i:i + 1]), target[i:i + 1],
                                         t[i:i + 1]).sum()
                flat = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
            grads.append(flat.to(torch.float64))
            losses.append(float(loss.detach()))
        g = torch.stack(grads)  # [n, P]
        gram = (g @ g.T).numpy()  # [n, n]: g_i . g_j, all a resample's mean needs
        out[objective] = {"value": _trace_cov(gram, np.ones((1, len(x0))))[0], "loss_mean": float(np.mean(losses)),
                          "loss_var": float(np.var(losses, ddof=1))}
        if counts is not None:
            out[objective]["replicates"] = _trace_cov(gram, counts)
    return out


def _trace_cov(gram: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B] tr Cov of the gradients resampled by counts [B, n] (ddof 1): (sum_i c_i |g_i|^2 - |sum_i c_i g_i|^2 / n)
    / (n - 1), from their Gram matrix."""
    n = gram.shape[0]
    c = np.asarray(counts, np.float64)
    total = c @ np.diag(gram)
    squared_sum = np.einsum("bi,ij,bj->b", c, gram, c)
    return (total - squared_sum / n) / (n - 1)


def _time_below(times: np.ndarray, kl: np.ndarray, epsilon: float) -> np.ndarray:
    """[...] the first time at which KL [..., T] falls below epsilon, interpolated linearly in log KL between the
    grid point before and the one below (times [T] increasing); the last time where it never does."""
    below = kl < epsilon
    first = np.where(below.any(-1), below.argmax(-1), len(times) - 1)
    prev = np.maximum(first - 1, 0)
    k_prev = np.take_along_axis(kl, prev[..., None], -1)[..., 0]
    k_first = np.take_along_axis(kl, first[..., None], -1)[..., 0]
    # guard: a Monte Carlo KL at or below 0 (the law at equilibrium to its precision) has no logarithm: clamp it
    floor = 1e-12
    lp, lf = np.log(np.maximum(k_prev, floor)), np.log(np.maximum(k_first, floor))
    share = np.where((first > 0) & (lp > lf), (lp - math.log(epsilon)) / np.where(lp > lf, lp - lf, 1.0), 0.0)
    return times[prev] + np.clip(share, 0.0, 1.0) * (times[first] - times[prev])


def prior_kl(mixture, sde, *, times, n: int = 20000, epsilon: float = 0.01, seed: int = 0,
             counts: np.ndarray | None = None) -> dict:
    """How fast a Gaussian-mixture data law approaches the prior under `sde`: KL(p_t || prior) in nats per t in
    `times` (increasing), each the mean over n draws u ~ p_t of log p_t(u) - log prior(u), both exact
    (cldsgm.oracles.GaussianMixture.marginal_log_prob); and the record's value, the time at which KL first falls
    below `epsilon` (log-linear between grid points; 1 where it never does), with replicates from the per-draw
    log-ratios resampled by counts [B, n] (the same resample at every t). Returns {'per_time': [{t, kl, se}],
    'value', 'epsilon', 'replicates'}."""
    generator = torch.Generator().manual_seed(seed)
    rows, ratios = [], []
    for t in times:
        x0 = mixture.sample(n, generator=generator)
        u = _perturbed(sde, x0, t, generator)
        log_ratio = (mixture.marginal_log_prob(sde, u, torch.tensor(float(t), dtype=torch.float64))
                     - sde.prior_logp(u)).numpy()
        rows.append({"t": float(t), "kl": float(log_ratio.mean()),
                     "se": float(log_ratio.std(ddof=1) / math.sqrt(n))})
        ratios.append(log_ratio)
    grid = np.asarray(times, np.float64)
    kl = np.asarray([r["kl"] for r in rows])
    out = {"per_time": rows, "epsilon": epsilon, "value": float(_time_below(grid, kl, epsilon))}
    if counts is not None:
        out["replicates"] = _time_below(grid, counts @ np.stack(ratios, 1) / n, epsilon)
    return out
