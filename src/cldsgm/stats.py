"""Bootstrap statistics without torch: resampling counts, basic intervals, paired differences and verdicts.

A metric of a sample set is recomputed on B resamples of the set (cldsgm.eval.bootstrap computes the replicates).
Resample b of a set of n items is given by counts c_b (how often each item is drawn), from a generator seeded by (the
set's sampling seed, n): two sets of one source and seed, whose item i shares its prior draw and noise stream in
both, are resampled with the same counts, so their replicates are paired; sets of other seeds or sizes get
independent counts. The difference of two records' replicates, replicate by replicate, is then the bootstrap
distribution of the difference of their metrics, paired or not as the sets are (`compare`).

Intervals are basic bootstrap intervals, [2 theta - q(1 - a/2), 2 theta - q(a/2)] of the replicates q: a resampled
set repeats items, which biases a distance upwards; the basic interval reflects that shift around the estimate
instead of adding it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "METHOD", "MIN_RESAMPLES", "basic_interval", "compare", "interval_fields",
           "resample_counts", "verdict"]

DEFAULT_RESAMPLES = 200
MIN_RESAMPLES = 100  # fewer make the 2.5 % quantile rest on two or three replicates
METHOD = "basic bootstrap over the generated samples"
_STREAM = 0x2B07  # keeps the resampling stream apart from the sampling noise of the same seed


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """[B, n] int64: how often item i is drawn in resample b (each row sums to n), seeded by (seed, n)."""
    if resamples < MIN_RESAMPLES:
        raise ValueError(f"the bootstrap needs at least {MIN_RESAMPLES} resamples, got {resamples}")
    rng = np.random.default_rng([int(seed) & (2**63 - 1), int(n), _STREAM])
    draws = rng.integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(resamples), n), draws.ravel()), 1)
    return counts


def basic_interval(estimate: float, replicates, level: float = 0.95) -> tuple[float, float]:
    """(low, high) basic bootstrap interval of `estimate` from its replicates."""
    q_low, q_high = np.quantile(np.asarray(replicates, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(2 * estimate - q_high), float(2 * estimate - q_low)


def interval_fields(estimate: float, replicates, seed: int, *, method: str = METHOD, nonnegative: bool = True,
                    upper: float | None = None) -> dict:
    """The record fields of an interval: ci_low, ci_high (a distance's lower end clipped at 0, a share's upper end
    at `upper` = 1: the basic interval reflects the replicates around the estimate and can cross either bound),
    ci_method and the bootstrap block {resamples, seed, replicates} that paired comparisons read."""
    low, high = basic_interval(estimate, replicates)
    reps = [float(v) for v in np.asarray(replicates, np.float64)]
    return {"ci_low": max(low, 0.0) if nonnegative else low, "ci_high": high if upper is None else min(high, upper),
            "ci_method": f"{method} ({len(reps)} resamples, 95 %)",
            "bootstrap": {"resamples": len(reps), "seed": int(seed), "replicates": reps}}


def compare(estimate_a: float, replicates_a, estimate_b: float, replicates_b, level: float = 0.95) -> dict:
    """A - B: the difference, its basic interval from the replicate-wise differences, and how many replicates.

    Replicates of sets resampled with the same counts (paired sets) give a paired interval; independent ones an
    unpaired one: the caller need not know which (see the module docstring)."""
    a, b = np.asarray(replicates_a, np.float64), np.asarray(replicates_b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"replicates of different counts ({a.shape} and {b.shape}) cannot be compared")
    difference = float(estimate_a - estimate_b)
    low, high = basic_interval(difference, a - b, level)
    return {"difference": difference, "ci_low": low, "ci_high": high, "resamples": len(a)}


def verdict(low: float, high: float, lower_is_better: bool = True) -> str:
    """For 'A beats B' from the interval of A - B: holds where it excludes 0 in the claimed direction, does not
    hold where it excludes 0 the other way, inconclusive where it holds 0."""
    if any(not math.isfinite(v) for v in (low, high)):
        return "not computed"
    better, worse = (high < 0, low > 0) if lower_is_better else (low > 0, high < 0)
    return "holds" if better else "does not hold" if worse else "inconclusive"
