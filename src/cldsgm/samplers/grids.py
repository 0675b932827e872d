"""Time grids for fixed-step samplers: forward times from 1 down to t_min, float64, descending.

With denoising the sampler takes nfe - 1 solver steps on nfe grid points and spends the last evaluation on
the noise-free denoising step at t_min, so NFE = nfe exactly (as CLD-SGM's and PSLD's samplers).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cldsgm.catalog import STRIDINGS

__all__ = ["time_grid", "check_t_min"]


def check_t_min(t_min: float) -> float:
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min!r}")
    return float(t_min)


def time_grid(nfe: int, t_min: float = 1e-3, striding: str = "uniform", *, denoise: bool = True) -> Tensor:
    """Forward times t_0 = 1 > t_1 > ... > t_n = t_min for a budget of `nfe` score evaluations.

    n = nfe - 1 steps with denoising, nfe without. 'uniform': t_i = 1 - (1 - t_min) i / n.
    'quadratic' (the papers' QS): t_i = t_min + (1 - t_min) ((n - i) / n)^2, dense near the data.
    Returns float64 [n + 1].
    """
    if striding not in STRIDINGS:
        raise ValueError(f"striding must be one of {STRIDINGS}, got {striding!r}")
    check_t_min(t_min)
    steps = nfe - 1 if denoise else nfe
    if not isinstance(nfe, int) or nfe < 2 or steps < 1:
        raise ValueError(f"nfe must be an integer >= 2 (one step plus the denoising step), got {nfe!r}")
    frac = torch.arange(steps, -1, -1, dtype=torch.float64) / steps  # (n - i) / n
    if striding == "quadratic":
        frac = frac**2
    grid = t_min + (1.0 - t_min) * frac
    grid[0] = 1.0  # exact endpoints, free of rounding
    grid[-1] = t_min
    return grid
