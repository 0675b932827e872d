"""Broadcasting of per-sample float64 coefficients against data tensors."""

from __future__ import annotations

from torch import Tensor


def per_sample(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape a coefficient of shape [] or [B] to broadcast against `like` ([B, ...]) and cast to its dtype.

    This is the one place where float64 SDE coefficients meet the data's dtype.
    """
    coef = coef.to(device=like.device, dtype=like.dtype)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape[0], *([1] * (like.ndim - 1)))
