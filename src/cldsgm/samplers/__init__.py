"""Samplers of the reverse process: Euler-Maruyama, SSCS, predictor-corrector and the probability-flow ODE.

`generate` is the one entry point that builds the grid, the prior draw and the per-sample noise from seeds,
counts the NFE and runs a sampler by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cldsgm.samplers.grids import STRIDINGS, check_t_min, time_grid
from cldsgm.samplers.integrators import sample_conjugate, sample_ge_ode, sample_ge_sde
from cldsgm.samplers.noise import CountingScore, PerSampleNoise, sample_seeds
from cldsgm.samplers.ode import ODE_METHODS, sample_ode
from cldsgm.samplers.sde_solvers import denoise_step, sample_em, sample_euler_ode, sample_pc, sample_sscs
from cldsgm.sde import VPSDE, PhaseSpaceSDE

__all__ = ["PHASE_SPACE_ONLY", "SAMPLERS", "STRIDINGS", "ODE_METHODS", "CountingScore", "PerSampleNoise",
           "SampleResult", "check_sampler", "denoise_step", "generate", "sample_conjugate", "sample_em",
           "sample_euler_ode", "sample_ge_ode", "sample_ge_sde", "sample_ode", "sample_pc", "sample_seeds",
           "sample_sscs", "time_grid"]

SAMPLERS = {"em": sample_em, "sscs": sample_sscs, "pc": sample_pc, "ode": sample_ode, "euler_ode": sample_euler_ode,
            "conjugate": sample_conjugate, "ge_ode": sample_ge_ode, "ge_sde": sample_ge_sde}
PHASE_SPACE_ONLY = ("sscs", "conjugate", "ge_ode", "ge_sde")  # they use the 2x2 structure of CLD / PSLD


def check_sampler(sde, name: str) -> None:
    """Raise ValueError for an unknown sampler or one that does not apply to this SDE."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    if name in PHASE_SPACE_ONLY and not isinstance(sde, PhaseSpaceSDE):
        raise ValueError(f"sampler {name!r} needs a phase-space SDE (cld or psld), not {type(sde).__name__}")
    if name == "pc" and not isinstance(sde, VPSDE):
        raise ValueError(f"sampler 'pc' is defined for vpsde only, not {type(sde).__name__}")


@dataclass(frozen=True)
class SampleResult:
    """x: [B, C, ...] samples; u: the final state (x and, for phase space, v); nfe: score evaluations."""

    x: Tensor
    u: Tensor
    nfe: int


def generate(sde, score_fn, n: int, data_shape, *, sampler: str, nfe: int | None = None, t_min: float = 1e-3,
             striding: str = "uniform", seed: int = 0, first_index: int = 0, denoise: bool = True,
             dtype=torch.float32, device=None, **options) -> SampleResult:
    """Draw samples first_index ... first_index + n - 1 of run `seed` with a sampler by name.

    data_shape: shape of one data sample (C, ...). nfe: the fixed-step budget (ignored by 'ode', which is
    adaptive). options: the sampler's own keyword arguments (e.g. score_step for SSCS, rtol for ODE).
    """
    check_sampler(sde, sampler)
    check_t_min(t_min)
    if sampler == "ode":
        ts = torch.tensor([1.0, t_min], dtype=torch.float64)
    else:
        if nfe is None:
            raise ValueError(f"sampler {sampler!r} needs an NFE budget")
        per_step = 1 + options.get("n_corrector", 1) if sampler == "pc" else 1
        n_steps = (nfe - int(denoise)) // per_step
        if n_steps < 1:
            raise ValueError(f"nfe={nfe!r} leaves no solver step for sampler {sampler!r}")
        ts = time_grid(n_steps + int(denoise), t_min, striding, denoise=denoise)
    noise = PerSampleNoise(sample_seeds(seed, first_index, n, device=device))
    state_shape = (sde.state_channels(data_shape[0]), *data_shape[1:])
    u_prior = sde.prior_from_normal(noise.normal(state_shape, dtype=dtype, device=device))
    counting = CountingScore(score_fn)
    u = SAMPLERS[sampler](sde, counting, u_prior, ts, noise=noise, denoise=denoise, **options)
    return SampleResult(sde.split(u)[0], u, counting.nfe)
