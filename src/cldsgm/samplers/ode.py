"""The probability-flow ODE, integrated by an adaptive solver from torchdiffeq (as CLD-SGM's get_ode_sampler)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from cldsgm.catalog import ODE_METHODS
from cldsgm.samplers.sde_solvers import denoise_step

__all__ = ["integrate", "sample_ode"]


def integrate(fn, y0: Tensor, span: Tensor, *, rtol: float, atol: float, method: str) -> Tensor:
    """Solve dy/ds = fn(s, y) over span = [s0, s1] with torchdiffeq; returns y(s1) (same shape as y0).

    fn receives s as a float64 0-d tensor inside the span."""
    if method not in ODE_METHODS:
        raise ValueError(f"ODE method must be one of {ODE_METHODS}, got {method!r}")
    from torchdiffeq import odeint  # here, not at import: it brings scipy.integrate (1 s per sampling job)

    kwargs = {"method": "scipy_solver", "options": {"solver": "RK45"}} if method == "scipy_rk45" else {"method": method}
    lo, hi = sorted((float(span[0]), float(span[-1])))

    def inside_span(s: Tensor, y: Tensor) -> Tensor:
        # torchdiffeq's initial-step heuristic probes beyond the span; keep those probes where fn is defined
        return fn(torch.as_tensor(min(max(float(s), lo), hi), dtype=torch.float64), y)

    with warnings.catch_warnings():
        # torchdiffeq passes min_step to every scipy solver; RK45 ignores it and warns each call
        warnings.filterwarnings("ignore", message=".*no effect for a chosen solver.*", category=UserWarning)
        return odeint(inside_span, y0, span, rtol=rtol, atol=atol, **kwargs)[-1]


def sample_ode(sde, score_fn, u: Tensor, ts: Tensor, *, noise=None, denoise: bool = True, rtol: float = 1e-5,
               atol: float = 1e-5, method: str = "scipy_rk45", denoise_drift: str = "sde") -> Tensor:
    """Integrate du/dtau = -f + g^2 s / 2 in reverse time from t = ts[0] (= 1) down to t = ts[-1] (= t_min).

    denoise_drift: the final step t_min -> 0 with the reverse-SDE drift ('sde', CLD-SGM) or the
    probability-flow drift ('pf', PSLD's ODE sampler).

    Only the ends of ts are used; the solver picks its own steps (count them with CountingScore). The batch
    is integrated as one system, as in the references, so the step sizes are shared by the batch and a
    sample can move within the solver tolerance when its batch changes. `noise` is unused (no noise).
    """
    if denoise_drift not in ("sde", "pf"):
        raise ValueError(f"denoise_drift must be 'sde' or 'pf', got {denoise_drift!r}")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    t_start, t_end = float(ts[0]), float(ts[-1])
    shape = u.shape

    def velocity(tau: Tensor, y: Tensor) -> Tensor:
        t = t_start - tau  # forward time
        state = y.reshape(shape)
        return sde.reverse_drift(state, t, score_fn(state, t), probability_flow=True).reshape(-1)

    # float64 as both references: in float32 the end 1 - 1e-3 would be 0.99900001
    span = torch.tensor([0.0, t_start - t_end], dtype=torch.float64, device=u.device)
    with torch.no_grad():
        u = integrate(velocity, u.reshape(-1), span, rtol=rtol, atol=atol, method=method).reshape(shape)
    return denoise_step(sde, score_fn, u, ts[-1], probability_flow=denoise_drift == "pf") if denoise else u
