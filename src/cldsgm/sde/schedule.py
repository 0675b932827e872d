"""Noise schedules beta(t) and their integrals B(t) = int_0^t beta(s) ds, in float64."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LinearBeta"]


@dataclass(frozen=True)
class LinearBeta:
    """beta(t) = beta_min + (beta_max - beta_min) t on t in [0, 1].

    The CLD reference writes this as beta0 + beta1 t: beta0 = beta_min and beta1 = beta_max - beta_min
    (beta1 is a slope, not a maximum). Constant beta (the CLD and PSLD image configs) is beta_min = beta_max.
    """

    beta_min: float
    beta_max: float

    def __post_init__(self) -> None:
        for name in ("beta_min", "beta_max"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value != value or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if self.beta_min == 0 and self.beta_max == 0:
            raise ValueError("beta_min and beta_max are both 0: the process would never move")

    def beta(self, t: Tensor) -> Tensor:
        """beta(t), same shape and dtype as t."""
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def integral(self, t: Tensor) -> Tensor:
        """B(t) = beta_min t + (beta_max - beta_min) t^2 / 2."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def integral_between(self, t_lo: Tensor, t_hi: Tensor) -> Tensor:
        """B(t_hi) - B(t_lo) without the cancellation of two large integrals."""
        return (t_hi - t_lo) * (self.beta_min + 0.5 * (self.beta_max - self.beta_min) * (t_hi + t_lo))


def as_time(t, *, name: str = "t") -> Tensor:
    """t as a float64 tensor, checked to lie in [0, 1]."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        bad = t[~((t >= 0) & (t <= 1))].flatten()[0].item()
        raise ValueError(f"{name} must lie in [0, 1] (forward time, T = 1), got {bad!r}")
    return t
