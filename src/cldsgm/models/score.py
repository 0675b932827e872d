"""From network output to eps, score and x0 for a given SDE and kernel.

A network returns a tensor shaped like the SDE's noise blocks (v for CLD, (x, v) or v for PSLD, x for
VPSDE). It is read as the eps of the kernel's reparameterisation u_t = mu_t + L_t eps, so the score is
-L_t^{-T} eps (the CLD paper, p. 5; the PSLD reference code factors its noise the same way).

With ``mixed_score`` (CLD's default) the network learns only the residual from an analytic Gaussian
reference score: eps_hat = output + eps_ref, where eps_ref is the eps that the reference score implies. For
CLD the reference is -v / Sigma_vv^HSM(t), so s = -v / Sigma_vv - l_t output exactly as the paper writes;
Sigma_vv always comes from the HSM kernel (numerical_eps included) whatever the objective, as in the
reference code, while l_t comes from the objective's kernel. For VPSDE the reference is -x (the score of
N(0, I)). For PSLD, whose reference has no mixed score, we apply the same per-block rule (-x / Sigma_xx,
-m / Sigma_mm on the noised blocks): our extension, off unless asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cldsgm.sde import VPSDE, LinearSDE
from cldsgm.sde._broadcast import per_sample

__all__ = ["ScoreParameterisation", "check_classifier_fits", "check_network_fits", "reference_score"]


def reference_score(sde: LinearSDE, u: Tensor, t: Tensor) -> Tensor:
    """The analytic Gaussian score behind the mixed-score parameterisation, shaped like u."""
    if isinstance(sde, VPSDE):
        return -u
    cov = sde.perturbation_cov(t, "hsm")
    x, v = sde.split(u)
    s_x = -x / per_sample(cov.xx, x) if "x" in sde.noise_blocks else torch.zeros_like(x)
    s_v = -v / per_sample(cov.vv, v) if "v" in sde.noise_blocks else torch.zeros_like(v)
    return sde.join(s_x, s_v)


class ScoreParameterisation:
    """Reads a network output as eps, score or x0 under one SDE, kernel (objective) and mixed-score choice.

    Args:
        sde: the forward process.
        objective: 'hsm' or 'dsm' for CLD/PSLD (the kernel whose L_t converts eps to score); VPSDE takes 'dsm'.
        mixed_score: add the analytic reference (see the module docstring).
    """

    def __init__(self, sde: LinearSDE, *, objective: str, mixed_score: bool):
        sde.ell(torch.tensor(0.5, dtype=torch.float64), objective)  # validates the objective for this SDE
        self.sde, self.objective, self.mixed_score = sde, objective, bool(mixed_score)

    def eps(self, output: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """eps_hat on the noise blocks, [B, n_noise_channels, ...]; output has the same shape."""
        if not self.mixed_score:
            return output
        return output + self.sde.eps_from_score(reference_score(self.sde, u, t), t, self.objective)

    def output_for_eps(self, eps: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """The network output that would give eps (inverse of eps())."""
        if not self.mixed_score:
            return eps
        return eps - self.sde.eps_from_score(reference_score(self.sde, u, t), t, self.objective)

    def score(self, output: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """The model score, shaped like u (zero on blocks that receive no noise)."""
        return self.sde.score_from_eps(self.eps(output, u, t), t, self.objective)

    def x0(self, output: Tensor, u: Tensor, t: Tensor) -> Tensor:
        """The data estimate implied by the output under the HSM kernel (VPSDE: its only kernel)."""
        return self.sde.x0_from_eps(u, self.eps(output, u, t), t)

    def score_fn(self, net):
        """A callable (u, t) -> score for samplers: net(u, t) is evaluated in u's dtype."""

        def score(u: Tensor, t: Tensor) -> Tensor:
            t = torch.as_tensor(t, dtype=torch.float64, device=u.device)
            t_net = t.expand(u.shape[0]) if t.ndim == 0 else t
            return self.score(net(u, t_net.to(u.dtype)), u, t)

        return score


def _output_on_zero_state(net: torch.nn.Module, sde: LinearSDE, data_shape, device, what: str):
    """(state, output) of `net` run once in eval mode on a zero state of one sample; ValueError (one line) when it
    cannot take the state at all."""
    channels, *spatial = [int(d) for d in data_shape]
    state = torch.zeros(1, sde.state_channels(channels), *spatial, device=device)
    was_training = net.training
    try:
        with torch.no_grad():
            return state, net.eval()(state, torch.full((1,), 0.5, device=device))
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{what} does not fit data of shape {list(data_shape)}: it cannot take a "
                         f"{type(sde).__name__} state of shape {list(state.shape)} ({first[:200]})") from None
    finally:
        net.train(was_training)


def check_network_fits(net: torch.nn.Module, sde: LinearSDE, data_shape, *, device=None, what: str = "network") -> None:
    """Run `net` once on a zero state of one sample; raise ValueError unless it maps
    [1, state_channels, *spatial] to [1, noise_channels, *spatial] for data of per-sample shape `data_shape`.

    So that a network that does not fit the data (an image net on 2-D points, wrong channel counts) fails with
    one line before anything is written, instead of deep inside a convolution.
    """
    state, out = _output_on_zero_state(net, sde, data_shape, device, what)
    channels, *spatial = [int(d) for d in data_shape]
    expected = (1, sde.noise_channels(channels), *spatial)
    if tuple(out.shape) != expected:
        raise ValueError(f"{what} does not fit data of shape {list(data_shape)}: a {type(sde).__name__} state "
                         f"{list(state.shape)} gives output {list(out.shape)}, expected {list(expected)}")


def check_classifier_fits(net: torch.nn.Module, sde: LinearSDE, data_shape, *, device=None,
                          what: str = "classifier") -> None:
    """Run a classifier once on a zero state of one sample; raise ValueError unless it maps [1, state_channels,
    *spatial] to logits [1, K] (the classifier-network counterpart of check_network_fits)."""
    state, out = _output_on_zero_state(net, sde, data_shape, device, what)
    if out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"{what} does not fit data of shape {list(data_shape)}: a {type(sde).__name__} state "
                         f"{list(state.shape)} gives output {list(out.shape)}, expected logits [1, K]")
