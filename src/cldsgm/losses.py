"""Score-matching objectives: DSM and HSM for CLD and PSLD, DSM for VPSDE (the CLD paper, Eq. 9 and App. B.3).

Every loss compares the network's eps_hat with the eps that produced u_t, on the noise blocks:

    reweightedv2  ||eps_hat - eps||^2                          (the CLD paper's image objective, lambda = l_t^-2)
    reweightedv1  g^2/2 ||eps_hat - eps||^2                    (Gamma beta for CLD, beta/2 for VPSDE)
    likelihood    g^2/2 ||s_theta - grad log p(u_t | .)||^2   (maximum-likelihood weighting of the KL bound)

g^2/2 is taken per noise block (for PSLD: beta Gamma / 2 on x, beta M nu / 2 on m). The per-sample loss is
summed over elements (reduction='sum', the CLD reference) or averaged (reduction='mean', the PSLD
reference, whose plain eps-MSE is reweightedv2 with 'mean').
"""

from __future__ import annotations

import torch
from torch import Tensor

from cldsgm.models.score import ScoreParameterisation
from cldsgm.sde import LinearSDE
from cldsgm.sde._broadcast import per_sample

__all__ = ["WEIGHTINGS", "REDUCTIONS", "classifier_loss", "sample_time", "score_matching_loss"]

WEIGHTINGS = ("reweightedv2", "reweightedv1", "likelihood")
REDUCTIONS = ("sum", "mean")


def sample_time(batch_size: int, t_min: float = 1e-5, *, generator: torch.Generator | None = None,
                device=None) -> Tensor:
    """t ~ U[t_min, 1] per sample, float64 [batch_size] (no importance sampling, as the references)."""
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=device)
    return t_min + (1.0 - t_min) * u


def _per_block(sde: LinearSDE, weights: tuple[Tensor, ...], err: Tensor) -> Tensor:
    """Multiply each noise block of err ([B, n_noise_channels, ...]) by its per-sample weight."""
    parts = torch.chunk(err, len(weights), dim=1)
    return torch.cat([per_sample(w, p) * p for w, p in zip(weights, parts, strict=True)], dim=1)


def score_matching_loss(
    sde: LinearSDE,
    net,
    x0: Tensor,
    *,
    objective: str = "hsm",
    weighting: str = "reweightedv2",
    mixed_score: bool = False,
    t_min: float = 1e-5,
    reduction: str = "sum",
    t: Tensor | None = None,
    eps: Tensor | None = None,
    v0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample score-matching loss, [B].

    Args:
        sde: VPSDE (objective 'dsm'), CLD or PSLD ('hsm' or 'dsm').
        net: callable (u_t, t) -> output shaped like the noise blocks; t is passed in u_t's dtype.
        x0: data batch [B, C, ...].
        objective: 'hsm' marginalises v0 analytically; 'dsm' draws v0 ~ N(0, gamma M) (or uses v0).
        weighting: one of WEIGHTINGS. mixed_score: see cldsgm.models.score.
        t_min: t ~ U[t_min, 1] when t is not given (1e-5 in the papers).
        reduction: 'sum' or 'mean' over the elements of a sample.
        t, eps, v0: fix the time [B] float64, the kernel noise (state-shaped) and the DSM start velocity.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    param = ScoreParameterisation(sde, objective=objective, mixed_score=mixed_score)
    if t is None:
        t = sample_time(x0.shape[0], t_min, generator=generator, device=x0.device)
    extra = {"v0": v0} if v0 is not None else {}
    perturbed = sde.perturb(x0, t, objective, eps=eps, generator=generator, **extra)
    eps_hat = param.eps(net(perturbed.u, t.to(perturbed.u.dtype)), perturbed.u, t)
    error = eps_hat - sde.noise_target(perturbed.eps)
    if weighting == "likelihood":
        # The score is linear in eps: s_theta - grad log p(u_t | .) = score_from_eps(eps_hat - eps).
        error = sde.noise_target(sde.score_from_eps(error, t, objective))
    squared = error**2
    if weighting != "reweightedv2":
        squared = _per_block(sde, sde.half_g2(t), squared)
    squared = squared.flatten(1)
    return squared.sum(1) if reduction == "sum" else squared.mean(1)


def classifier_loss(sde: LinearSDE, net, x0: Tensor, y: Tensor, *, objective: str = "hsm", t: Tensor,
                    eps: Tensor, v0: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of a noise-conditioned classifier: net(u_t, t) -> logits [B, K] for u_t ~ p(u_t | x0)
    (the whole state, as the PSLD reference's `tce_loss`), labels y [B] int64. t [B] float64, eps state-shaped."""
    extra = {"v0": v0} if v0 is not None else {}
    perturbed = sde.perturb(x0, t, objective, eps=eps, **extra)
    return torch.nn.functional.cross_entropy(net(perturbed.u, t.to(perturbed.u.dtype)), y)
