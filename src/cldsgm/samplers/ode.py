"""The probability-flow ODE, integrated by an adaptive solver from torchdiffeq (cld_spec.md section 3.4)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchdiffeq import odeint

from cldsgm.samplers.sde_solvers import denoise_step

__all__ = ["ODE_METHODS", "sample_ode", "odeint_options"]

# 'scipy_rk45' is the references' solver (scipy's RK45 through torchdiffeq); the native torchdiffeq
# methods run on the data's device without a round trip through numpy.
ODE_METHODS = ("scipy_rk45", "dopri5", "bosh3", "adaptive_heun")


def odeint_options(method: str) -> dict:
    """Keyword arguments of torchdiffeq.odeint for a method name of ODE_METHODS."""
    if method not in ODE_METHODS:
        raise ValueError(f"ODE method must be one of {ODE_METHODS}, got {method!r}")
    if method == "scipy_rk45":
        return {"method": "scipy_solver", "options": {"solver": "RK45"}}
    return {"method": method}


def sample_ode(sde, score_fn, u: Tensor, ts: Tensor, *, noise=None, denoise: bool = True, rtol: float = 1e-5,
               atol: float = 1e-5, method: str = "scipy_rk45") -> Tensor:
    """Integrate du/dtau = -f + g^2 s / 2 in reverse time from t = ts[0] (= 1) down to t = ts[-1] (= t_min).

    Only the ends of ts are used; the solver picks its own steps (count them with CountingScore). The batch
    is integrated as one system, as in the references, so the step sizes are shared by the batch and a
    sample can move within the solver tolerance when its batch changes. `noise` is unused (no noise).
    """
    ts = torch.as_tensor(ts, dtype=torch.float64)
    t_start, t_end = float(ts[0]), float(ts[-1])
    shape = u.shape

    def velocity(tau: Tensor, y: Tensor) -> Tensor:
        # torchdiffeq's initial-step heuristic probes beyond the span; clamp so those probes stay defined
        t = torch.as_tensor(min(max(t_start - float(tau), t_end), t_start), dtype=torch.float64)
        state = y.reshape(shape)
        return sde.reverse_drift(state, t, score_fn(state, t), probability_flow=True).reshape(-1)

    span = torch.tensor([0.0, t_start - t_end], dtype=u.dtype, device=u.device)
    with torch.no_grad():
        u = odeint(velocity, u.reshape(-1), span, rtol=rtol, atol=atol, **odeint_options(method))[-1].reshape(shape)
    return denoise_step(sde, score_fn, u, ts[-1]) if denoise else u
