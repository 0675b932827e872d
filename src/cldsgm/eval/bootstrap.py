"""Bootstrap replicates of the sample metrics: each metric recomputed exactly on B resamples of the generated
samples (counts from cldsgm.stats.resample_counts), the reference set fixed and, for sliced W2, the projections
fixed; with the tricks below that avoid recomputing what a resample does not change. cldsgm.stats turns replicates
into intervals and comparisons.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["energy_replicates", "frechet_replicates", "kid_subsets", "mode_tv_replicates", "sliced_w2_replicates"]


def sliced_w2_replicates(x: np.ndarray, y: np.ndarray, counts: np.ndarray, *, n_projections: int = 512,
                         seed: int = 0) -> np.ndarray:
    """[B] sliced W2 of each resample of x against y (equal sizes, the projections of cldsgm.eval.distances).

    A resample repeats items, so its sorted projection is the sorted projection of x with item j repeated c_j
    times: its k-th value is that of the item where the cumulative counts (in sorted order) first exceed k. No
    sort per resample: a scatter of the counts and a cumulative sum find those items.
    """
    xt, yt = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(y, np.float64))
    n = xt.shape[0]
    if yt.shape[0] != n or counts.shape[1] != n:
        raise ValueError(f"sliced W2 replicates need equal sizes, got {n}, {yt.shape[0]} and counts {counts.shape}")
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_projections, xt.shape[1], generator=gen, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    px, order = torch.sort(directions @ xt.T, dim=1)  # [P, n], as sliced_wasserstein computes them
    py, _ = torch.sort(directions @ yt.T, dim=1)
    # counts and ranks are at most n: int16 while n fits (a quarter of int64's memory traffic, 30 % faster on the
    # diamond's 2000 points; the same items picked, so the same values), int64 beyond
    small = torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int64
    c = torch.from_numpy(counts).to(small)
    one = torch.ones(1, 1, 1, dtype=small)
    out = np.empty(len(counts))
    chunk = max(1, (1 << 22) // (n_projections * n))  # resamples at once: about 4M elements per array
    for start in range(0, len(c), chunk):
        block = c[start:start + chunk]  # [b, n]
        sorted_counts = block[:, order]  # [b, P, n]: the counts in each projection's sorted order
        ends = sorted_counts.cumsum(2, dtype=small)  # item j of the sorted order fills [ends_j - c_j, ends_j)
        marks = torch.zeros(len(block), n_projections, n + 1, dtype=small)
        marks.scatter_add_(2, ends.long(), one.expand(ends.shape))
        item = marks[:, :, :n].cumsum(2, dtype=small)  # item index (in sorted order) of rank k
        values = px.expand(len(block), -1, -1).gather(2, item.long())
        out[start:start + len(block)] = values.sub_(py).square_().mean((1, 2)).sqrt().numpy()
    return out


def energy_replicates(x: np.ndarray, y: np.ndarray, counts: np.ndarray, *, chunk: int = 2048) -> np.ndarray:
    """[B] energy distance (V-statistic) of each resample of x against y: 2 E|X - Y| - E|X - X'| - E|Y - Y'|, with
    E|X* - Y| = c . a / n (a_i the mean distance of x_i to y) and E|X* - X*'| = c^T D c / n^2 (D of x, once)."""
    xt, yt = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(y, np.float64))
    n = xt.shape[0]
    a = torch.cat([torch.cdist(xt[i:i + chunk], yt).mean(1) for i in range(0, n, chunk)])
    yy = sum(torch.cdist(yt[i:i + chunk], yt).sum() for i in range(0, yt.shape[0], chunk)) / yt.shape[0] ** 2
    c = torch.from_numpy(counts).to(torch.float64)
    xx = torch.zeros(len(c), dtype=torch.float64)
    for i in range(0, n, chunk):  # c^T D c, by row blocks of D
        xx += (c[:, i:i + chunk] * (c @ torch.cdist(xt[i:i + chunk], xt).T)).sum(1)
    return (2 * (c @ a) / n - xx / n**2 - yy).numpy()


def mode_tv_replicates(modes: np.ndarray, weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[B] total variation between the resampled mode weights and the true weights; modes: [n] component index."""
    onehot = np.zeros((len(modes), len(weights)))
    onehot[np.arange(len(modes)), modes] = 1.0
    resampled = counts @ onehot / counts.sum(1, keepdims=True)
    return 0.5 * np.abs(resampled - np.asarray(weights)[None, :]).sum(1)


def frechet_replicates(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray, counts: np.ndarray, *,
                       device="cpu") -> np.ndarray:
    """[B] Fréchet distance of each resample of `features` [n, d] to N(mu_ref, sigma_ref), in float64 on `device`.

    |mu_b - mu_r|^2 + tr S_b + tr S_r - 2 tr (S_r^1/2 S_b S_r^1/2)^1/2, S_b the covariance of the resample (ddof 1,
    as np.cov of the resampled set). With n <= d the last term comes from the n x n Gram matrix of the centred
    resample in the S_r metric (the same nonzero eigenvalues, n^3 instead of d^3 per resample).
    """
    dev = torch.device(device)
    f = torch.from_numpy(np.asarray(features, np.float64)).to(dev)
    mu_r = torch.from_numpy(np.asarray(mu_ref, np.float64)).to(dev)
    s_r = torch.from_numpy(np.asarray(sigma_ref, np.float64)).to(dev)
    n, d = f.shape
    c = torch.from_numpy(counts).to(dev, torch.float64)
    out = torch.empty(len(c), dtype=torch.float64)
    tr_r = torch.trace(s_r)
    if n <= d:
        gram = f @ s_r @ f.T  # [n, n]: x_i^T S_r x_j
    else:
        w, v = torch.linalg.eigh(s_r)
        root = (v * w.clamp_min(0).sqrt()) @ v.T  # S_r^1/2
    sq = (f * f).sum(1)
    for b in range(len(c)):
        mu = c[b] @ f / n
        tr_b = (c[b] @ sq - n * mu @ mu) / (n - 1)
        if n <= d:
            v_b = f @ (s_r @ mu)  # x_i^T S_r mu
            g = gram - v_b[:, None] - v_b[None, :] + mu @ s_r @ mu  # (x_i - mu)^T S_r (x_j - mu)
            half = c[b].sqrt()
            eig = torch.linalg.eigvalsh(half[:, None] * g * half[None, :] / (n - 1))
        else:
            cov = ((f * c[b][:, None]).T @ f - n * torch.outer(mu, mu)) / (n - 1)
            eig = torch.linalg.eigvalsh(root @ cov @ root)
        # rounding leaves eigenvalues of a singular product slightly below 0: they are 0
        out[b] = ((mu - mu_r) ** 2).sum() + tr_b + tr_r - 2 * eig.clamp_min(0).sqrt().sum()
    return out.numpy()




def kid_subsets(features: np.ndarray, ref_features: np.ndarray, *, num_subsets: int = 100, max_subset_size: int = 1000,
                seed: int = 0) -> tuple[float, np.ndarray]:
    """(KID, [num_subsets] per-subset estimates): clean-fid's kernel_distance, term by term (the same subset draws
    from numpy's global generator seeded by `seed`, the same arithmetic and order: the same value), keeping each
    subset's unbiased MMD^2 so that KID gets an interval (a bootstrap over its subsets, which are draws of the
    samples)."""
    state = np.random.get_state()  # noqa: NPY002 - clean-fid draws its subsets from the legacy global generator
    np.random.seed(seed)  # noqa: NPY002
    try:
        d = features.shape[1]
        m = min(min(features.shape[0], ref_features.shape[0]), max_subset_size)
        total, terms = 0, []
        for _ in range(num_subsets):
            x = ref_features[np.random.choice(ref_features.shape[0], m, replace=False)]  # noqa: NPY002
            y = features[np.random.choice(features.shape[0], m, replace=False)]  # noqa: NPY002
            a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
            b = (x @ y.T / d + 1) ** 3
            term = (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
            total += term
            terms.append(term / m)
        return float(total / num_subsets / m), np.asarray(terms)
    finally:
        np.random.set_state(state)  # noqa: NPY002
