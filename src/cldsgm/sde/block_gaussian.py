"""Per-coordinate 2x2 Gaussian algebra for phase-space states u = (x, v).

Every covariance in CLD and PSLD is Sigma (x) I_d with a 2x2 Sigma shared by all coordinates, so all the
linear algebra reduces to three scalars (xx, xv, vv) per sample. This module is the single place that
factorises, solves and takes log-determinants of such matrices; nothing else in the package does 2x2 algebra.

Scalars are tensors broadcastable against each other (typically float64 of shape [B] or []).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Cov2", "Tri2"]


def _check_finite(name: str, value: Tensor) -> Tensor:
    # Square roots of tiny negative numbers (lost precision) surface as NaN; fail loudly, as the reference does.
    if not torch.isfinite(value).all():
        raise FloatingPointError(
            f"numerical precision error: {name} is not finite; increase numerical_eps "
            "or keep t away from 0"
        )
    return value


@dataclass(frozen=True)
class Tri2:
    """A triangular square root of a 2x2 covariance.

    mode='lower': L = [[a, 0], [b, c]] (Cholesky, L L^T = Sigma).
    mode='upper': U = [[a, b], [0, c]] (U U^T = Sigma).
    """

    mode: str
    a: Tensor
    b: Tensor
    c: Tensor

    def matvec(self, e_x: Tensor, e_v: Tensor) -> tuple[Tensor, Tensor]:
        """L @ (e_x, e_v), per coordinate: maps standard noise to a correlated sample."""
        if self.mode == "lower":
            return self.a * e_x, self.b * e_x + self.c * e_v
        return self.a * e_x + self.b * e_v, self.c * e_v

    def inv_t_matvec(self, e_x: Tensor, e_v: Tensor) -> tuple[Tensor, Tensor]:
        """L^{-T} @ (e_x, e_v), per coordinate: the Gaussian score is -L^{-T} eps."""
        off = self.b / (self.a * self.c)
        if self.mode == "lower":
            return e_x / self.a - off * e_v, e_v / self.c
        return e_x / self.a, e_v / self.c - off * e_x

    def t_matvec(self, s_x: Tensor, s_v: Tensor) -> tuple[Tensor, Tensor]:
        """L^T @ (s_x, s_v): inverts inv_t_matvec (eps = -L^T score)."""
        if self.mode == "lower":
            return self.a * s_x + self.b * s_v, self.c * s_v
        return self.a * s_x, self.b * s_x + self.c * s_v

    def logdet(self) -> Tensor:
        """log det(L L^T) = 2 (log a + log c)."""
        return 2.0 * (torch.log(self.a) + torch.log(self.c))


@dataclass(frozen=True)
class Cov2:
    """Symmetric 2x2 covariance [[xx, xv], [xv, vv]] acting per coordinate."""

    xx: Tensor
    xv: Tensor
    vv: Tensor

    def add_diag(self, eps: float) -> Cov2:
        """Sigma + eps I (the reference's numerical_eps: diagonal only, never the xv entry)."""
        return Cov2(self.xx + eps, self.xv, self.vv + eps)

    def det(self) -> Tensor:
        return self.xx * self.vv - self.xv**2

    def logdet(self) -> Tensor:
        return self.factor("lower").logdet()

    def factor(self, mode: str = "lower") -> Tri2:
        """Triangular square root: 'lower' is the Cholesky factor, 'upper' solves U U^T = Sigma."""
        if mode == "lower":
            a = torch.sqrt(self.xx)
            b = self.xv / a
            c = torch.sqrt(self.vv - b**2)
        elif mode == "upper":
            c = torch.sqrt(self.vv)
            b = self.xv / c
            a = torch.sqrt(self.xx - b**2)
        else:
            raise ValueError(f"decomposition mode must be 'lower' or 'upper', got {mode!r}")
        for name, value in (("a", a), ("b", b), ("c", c)):
            _check_finite(f"{mode} factor entry {name}", value)
        return Tri2(mode, a, b, c)

    def solve(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Sigma^{-1} @ (x, v) per coordinate."""
        det = self.det()
        return (self.vv * x - self.xv * v) / det, (self.xx * v - self.xv * x) / det

    def quad(self, x: Tensor, v: Tensor) -> Tensor:
        """(x, v)^T Sigma^{-1} (x, v) per coordinate."""
        sx, sv = self.solve(x, v)
        return x * sx + v * sv

    def map(self, fn) -> Cov2:
        """Apply fn to each entry (casting, reshaping for broadcast)."""
        return Cov2(fn(self.xx), fn(self.xv), fn(self.vv))
