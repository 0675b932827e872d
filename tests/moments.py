"""Exact moment propagation through a sampler on 1-D Gaussian data (test T1 of docs/samplers.md): no Monte Carlo.

With data N(m, sigma^2) the exact score s = -Sigma_t(sigma^2)^{-1}(u - w_t m) is affine in u, so every sampler
step maps a Gaussian to a Gaussian. The state is carried as rows of a [K, 2] batch: row 0 is the mean, rows 1..
are the coefficients of independent standard normals (the state is u = row_0 + sum_k row_k z_k). Linear maps act
on every row alike; the score's offset acts on row 0 only; each noise draw gets two fresh rows (one per block),
so a step's added noise G e lands as new coefficients. Var(x) = sum of squared x-coefficients.
"""

from __future__ import annotations

import torch

from cldsgm.samplers.grids import time_grid
from cldsgm.samplers.sde_solvers import denoise_step


class RowNoise:
    """noise.like(u) for the row representation: draw k is the unit vector of rows first + w k + j for the state's
    w columns j (phase space: x and v; VPSDE: x)."""

    def __init__(self, rows: int, first: int):
        self.rows, self.next = rows, first

    def like(self, u: torch.Tensor) -> torch.Tensor:
        width = u.shape[1]
        if self.next + width > self.rows:
            raise RuntimeError("more noise draws than rows allocated")
        e = torch.zeros_like(u)
        for j in range(width):
            e[self.next + j, j] = 1.0
        self.next += width
        return e


class _Gaussian1D:
    """1-D data N(m, sigma^2) under `sde`; subclasses give the exact marginals, the (affine) score and the rows."""

    initial_rows = 0

    def __init__(self, sde, m: float = 0.3, sigma: float = 0.04):
        self.sde, self.m, self.sigma = sde, m, sigma


class GaussianData(_Gaussian1D):
    """1-D data N(m, sigma^2) under a phase-space SDE: exact marginals and the exact (affine) score."""

    initial_rows = 3  # the mean and two Cholesky columns

    def mean_cov(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        phi_xx, _, phi_vx, _ = self.sde.transition(self.sde.clock(t))
        cov = self.sde.cov(t, self.sigma**2, self.sde.init_v_var)
        mean = torch.stack([phi_xx * self.m, phi_vx * self.m]).to(torch.float64)
        matrix = torch.stack([torch.stack([cov.xx, cov.xv]), torch.stack([cov.xv, cov.vv])]).to(torch.float64)
        return mean, matrix

    def score(self, u: torch.Tensor, t) -> torch.Tensor:
        mean, cov = self.mean_cov(t)
        offset = torch.zeros_like(u)
        offset[0] = mean  # only the mean row carries the offset
        return -(u - offset) @ torch.linalg.inv(cov).T

    def rows_at(self, t, extra_rows: int) -> torch.Tensor:
        """The exact law at t as rows: mean, its two Cholesky columns, then zero rows for the noise draws."""
        mean, cov = self.mean_cov(t)
        rows = torch.zeros(3 + extra_rows, 2, dtype=torch.float64)
        rows[0] = mean
        rows[1:3] = torch.linalg.cholesky(cov).T  # u = mean + L z: coefficients of z_1, z_2 are L's columns
        return rows


class GaussianDataVP(_Gaussian1D):
    """1-D data N(m, sigma^2) under the VPSDE: x_t ~ N(alpha_t m, alpha_t^2 sigma^2 + 1 - alpha_t^2), score affine."""

    initial_rows = 2  # the mean and the standard deviation

    def _mean_var(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return float(self.sde.mean_coeff(t)) * self.m, float(self.sde.var(t, self.sigma**2))

    def score(self, u: torch.Tensor, t) -> torch.Tensor:
        mean, var = self._mean_var(t)
        offset = torch.zeros_like(u)
        offset[0] = mean
        return -(u - offset) / var

    def rows_at(self, t, extra_rows: int) -> torch.Tensor:
        mean, var = self._mean_var(t)
        rows = torch.zeros(2 + extra_rows, 1, dtype=torch.float64)
        rows[0, 0], rows[1, 0] = mean, var**0.5
        return rows


def var_x(rows: torch.Tensor) -> float:
    return float((rows[1:, 0] ** 2).sum())


def relative_variance_error(sampler, sde, nfe: int, striding: str, data: GaussianData, **options) -> float:
    """Var(x) after `sampler` (started from the exact law at t = 1) over Var(x) of the exact law at t_min pushed
    through the same denoising map, minus 1."""
    ts = time_grid(nfe, 1e-3, striding)
    draws = 4 * len(ts) + 8
    start = data.rows_at(1.0, 2 * draws)
    noise = RowNoise(len(start), data.initial_rows)
    out = sampler(sde, data.score, start, ts, noise=noise, denoise=True, **options)
    exact = denoise_step(sde, data.score, data.rows_at(ts[-1], 0), ts[-1])
    return var_x(out) / var_x(exact) - 1.0
