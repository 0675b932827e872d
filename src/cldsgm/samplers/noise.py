"""Per-sample noise streams and NFE counting.

Noise is a pure function of (sample seed, draw number, element index): a splitmix64 hash gives two
uniforms per element and Box-Muller turns them into a standard normal. A sample's noise therefore does
not depend on the batch it is drawn in, on how a run is split across processes, or on the device; and
unlike one torch.Generator per sample it costs a few vectorised integer operations per element.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["PerSampleNoise", "CountingScore", "sample_seeds"]

_GOLDEN, _MIX1, _MIX2 = (c - (1 << 64) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))
_STREAM, _ELEMENT = 0x632BE59BD9B4E019, 0x2545F4914F6CDD1D


def _shift_right(x: Tensor, k: int) -> Tensor:
    # torch's >> on int64 is arithmetic; the hash needs the logical shift of the unsigned value.
    return (x >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(x: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 tensors (two's-complement wrap-around is the intended arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def _unit_interval(bits: Tensor) -> Tensor:
    """Top 53 bits -> float64 in (0, 1); the half-step offset keeps log() away from 0."""
    return (_shift_right(bits, 11).to(torch.float64) + 0.5) * 2.0**-53


def sample_seeds(base_seed: int, first_index: int, count: int, device=None) -> Tensor:
    """Seeds of samples first_index ... first_index + count - 1 of a run: [count] int64."""
    return _splitmix64(torch.arange(first_index, first_index + count, dtype=torch.int64, device=device)
                       ^ _splitmix64(torch.tensor(base_seed, dtype=torch.int64, device=device)))


class PerSampleNoise:
    """Standard normal draws, one independent stream per sample.

    Args:
        seeds: int64 [B], one per sample (see sample_seeds).
    The k-th call of `normal` returns the k-th draw of every stream, so a sampler that makes the same
    sequence of calls produces the same noise for a sample whatever else is in its batch.
    """

    def __init__(self, seeds: Tensor):
        self.seeds = torch.as_tensor(seeds, dtype=torch.int64)
        if self.seeds.ndim != 1:
            raise ValueError(f"seeds must be a 1-D int64 tensor, got shape {tuple(self.seeds.shape)}")
        self.draws = 0

    def normal(self, shape, *, dtype=torch.float32, device=None) -> Tensor:
        """The next draw: [B, *shape] standard normal in `dtype`."""
        device = device if device is not None else self.seeds.device
        per_sample = math.prod(shape)
        pairs = (per_sample + 1) // 2  # Box-Muller yields two normals (cos and sin) per hashed pair
        pair_key = torch.arange(pairs, dtype=torch.int64, device=device) * _ELEMENT
        draw_key = _splitmix64(torch.tensor(self.draws, dtype=torch.int64, device=device) * _STREAM)
        stream = _splitmix64(self.seeds.to(device) ^ draw_key)
        self.draws += 1
        key = _splitmix64(stream[:, None] ^ pair_key[None, :])
        radius = torch.sqrt(-2.0 * torch.log(_unit_interval(key)))
        angle = 2.0 * math.pi * _unit_interval(_splitmix64(key))
        normals = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).flatten(1)
        return normals[:, :per_sample].reshape(len(self.seeds), *shape).to(dtype)

    def like(self, u: Tensor) -> Tensor:
        """The next draw, shaped and typed like u ([B, ...])."""
        return self.normal(tuple(u.shape[1:]), dtype=u.dtype, device=u.device)


class CountingScore:
    """Wraps a score function (u, t) -> score and counts its calls: the NFE of a sampler run."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.score_fn(u, t)
