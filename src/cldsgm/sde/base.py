"""What every forward process offers: a linear SDE du = f(u, t) dt + g(t) dW with a Gaussian kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cldsgm.sde.block_gaussian import Tri2

__all__ = ["LinearSDE", "Perturbed", "OBJECTIVES"]

OBJECTIVES = ("dsm", "hsm")


@dataclass(frozen=True)
class Perturbed:
    """A reparameterised draw u_t = mu_t + L_t eps from a perturbation kernel.

    u:      [B, n_state_channels, ...] the perturbed state, in the dtype of the data.
    eps:    same shape as u, the standard normal noise that produced it.
    factor: float64 square root of the kernel covariance (Tri2 for phase space, std tensor for VPSDE).
    """

    u: Tensor
    eps: Tensor
    factor: Tri2 | Tensor


class LinearSDE:
    """Common interface of VPSDE, CLD and PSLD.

    State tensors u have shape [B, n_state_channels, ...]: the data x for VPSDE, the channel concatenation
    (x, v) for the phase-space processes. Time t is forward time in [0, 1] (T = 1), a float64 tensor of
    shape [] or [B]. A *score* is a tensor shaped like u (the gradient of log p_t(u)); components that
    receive no noise never enter a sampler, so a score function may leave them at zero.
    The *noise blocks* are the parts of u that receive noise: their standard-normal eps is what a network
    predicts, with n_noise_channels = len(noise_blocks) * data channels.
    """

    noise_blocks: tuple[str, ...]
    state_blocks: tuple[str, ...]

    # -- the process -------------------------------------------------------------------------------------
    def beta(self, t: Tensor) -> Tensor:
        return self.schedule.beta(t)

    def drift(self, u: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def diffusion(self, t: Tensor, like: Tensor) -> Tensor:
        """g(t), broadcastable against `like` (shape [B or 1, n_state_channels, 1, ...])."""
        raise NotImplementedError

    def reverse_drift(self, u: Tensor, t: Tensor, score: Tensor, *, probability_flow: bool = False) -> Tensor:
        """Drift of the time reversal in reverse time tau = 1 - t: -f + g^2 s (g^2 s / 2 for the ODE).

        u, score: [B, n_state_channels, ...]; t: forward time. Returns a tensor shaped like u.
        """
        g = self.diffusion(t, like=u)
        weight = 0.5 if probability_flow else 1.0
        return -self.drift(u, t) + weight * g**2 * score

    # -- state layout ------------------------------------------------------------------------------------
    def split(self, u: Tensor) -> tuple[Tensor, ...]:
        """The state's blocks along the channel axis, in the order of state_blocks."""
        return torch.chunk(u, len(self.state_blocks), dim=1)

    def join(self, *blocks: Tensor) -> Tensor:
        return torch.cat(blocks, dim=1) if len(blocks) > 1 else blocks[0]

    def state_channels(self, data_channels: int) -> int:
        return len(self.state_blocks) * data_channels

    def noise_channels(self, data_channels: int) -> int:
        return len(self.noise_blocks) * data_channels

    def noise_target(self, eps: Tensor) -> Tensor:
        """The noise-block part of a full-state eps (what a network predicts)."""
        parts = dict(zip(self.state_blocks, self.split(eps), strict=True))
        return self.join(*(parts[name] for name in self.noise_blocks))

    def half_g2(self, t: Tensor) -> tuple[Tensor, ...]:
        """g^2 / 2 of each noise block, float64 [B]: the likelihood weighting lambda(t) of each block."""
        raise NotImplementedError
