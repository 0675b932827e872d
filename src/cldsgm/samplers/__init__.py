"""Samplers of the reverse process: Euler-Maruyama, SSCS, predictor-corrector, the probability-flow ODE and the
integrators beyond the papers' (conjugate, Gaussian-exact).

`generate` is the one entry point: it builds the grid, the prior draw and the per-sample noise from seeds, counts
the NFE and runs a sampler by its name in `cldsgm.catalog` (which says which SDEs it applies to and how many score
evaluations a step spends).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cldsgm import catalog
from cldsgm.samplers.grids import check_t_min, time_grid
from cldsgm.samplers.integrators import sample_conjugate, sample_ge_ode, sample_ge_sde
from cldsgm.samplers.noise import CountingScore, PerSampleNoise, sample_seeds
from cldsgm.samplers.ode import sample_ode
from cldsgm.samplers.sde_solvers import denoise_step, sample_em, sample_euler_ode, sample_pc, sample_sscs

__all__ = ["CountingScore", "PerSampleNoise", "SampleResult", "check_sampler", "denoise_step", "generate",
           "sample_conjugate", "sample_em", "sample_euler_ode", "sample_ge_ode", "sample_ge_sde", "sample_ode",
           "sample_pc", "sample_seeds", "sample_sscs", "start", "time_grid"]


def check_sampler(sde, name: str) -> None:
    """Raise ValueError for a sampler the catalog does not know, or one that does not apply to this SDE."""
    catalog.sampler(name, catalog.sde_name(sde))


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
    spec = catalog.sampler(sampler, catalog.sde_name(sde))
    ts, noise, u_prior = start(sde, sampler, n, data_shape, nfe=nfe, t_min=t_min, striding=striding, seed=seed,
                               first_index=first_index, denoise=denoise, dtype=dtype, device=device, options=options)
    counting = CountingScore(score_fn)
    u = spec.load()(sde, counting, u_prior, ts, noise=noise, denoise=denoise, **options)
    return SampleResult(sde.split(u)[0], u, counting.nfe)


def start(sde, sampler: str, n: int, data_shape, *, nfe: int | None, t_min: float, striding: str, seed: int,
          first_index: int, denoise: bool, dtype, device, options: dict) -> tuple[Tensor, PerSampleNoise, Tensor]:
    """What a run of samples first_index ... first_index + n - 1 starts from: (the forward times, float64 [steps + 1]
    for the NFE budget; the per-sample noise streams; the prior draw [n, state channels, ...], their first draw).
    Shared by `generate` and the conditional samplers (cldsgm.conditional), so both start from the same draws."""
    check_t_min(t_min)
    if catalog.sampler(sampler).adaptive:
        ts = torch.tensor([1.0, t_min], dtype=torch.float64)
    else:
        if nfe is None:
            raise ValueError(f"sampler {sampler!r} needs an NFE budget")
        n_steps = catalog.steps_for(sampler, nfe, options, denoise=denoise, exact=False)
        ts = time_grid(n_steps + int(denoise), t_min, striding, denoise=denoise)
    noise = PerSampleNoise(sample_seeds(seed, first_index, n, device=device))
    state_shape = (sde.state_channels(data_shape[0]), *data_shape[1:])
    return ts, noise, sde.prior_from_normal(noise.normal(state_shape, dtype=dtype, device=device))
