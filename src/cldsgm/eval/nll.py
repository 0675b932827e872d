"""NLL of a prepared split through the probability-flow ODE, sharded and resumable like sampling.

Each shard stores, per data item, [nll in nats, bits/dim (NaN for points), NFE of its batch] (float64); the
summary is the mean, its standard error (sample std / sqrt(n)) and the mean NFE. Images are dequantised
uniformly, (k + U) / 256 scaled to [-1, 1], with U a per-item function of (seed, index), and bits/dim use
the offset 7 of that scaling; CLD/PSLD give the upper bound (cldsgm.eval.likelihood). The ODE's adaptive
steps are shared by a batch, so the batch size is part of the run's identity and batches sit at global
multiples of it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cldsgm.catalog import EXACT_DIVERGENCE_DIMS, NLL_PROBES, PROBES
from cldsgm.eval.likelihood import dequantize, ode_likelihood
from cldsgm.samplers.grids import check_t_min
from cldsgm.samplers.noise import PerSampleNoise, sample_seeds
from cldsgm.sde import PhaseSpaceSDE
from cldsgm.shards import ShardPlan, batch_edges, check_slice, fill_shards, load_samples
from cldsgm.sources import ScoreSource

__all__ = ["dequantize_per_sample", "nll_summary", "nll_to_dir"]

_DEQUANT_STREAM = 0x5DEECE66D  # a base seed of its own: the ODE's v and probes use (seed, index) itself


def dequantize_per_sample(images: np.ndarray, seed: int, first_index: int) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float32 2 (k + U) / 256 - 1 with U ~ U(0, 1) a function of (seed, item index)."""
    noise = PerSampleNoise(sample_seeds(seed ^ _DEQUANT_STREAM, first_index, len(images)))
    z = noise.normal(tuple(images.shape[1:]), dtype=torch.float64)
    u = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))  # Phi(z): uniform on (0, 1)
    return dequantize(torch.from_numpy(images), uniforms=u)


def nll_to_dir(source: ScoreSource, data: np.ndarray, dataset: dict, out_dir: str | Path, *, n: int | None = None,
               first: int = 0, count: int | None = None, probes: str = "rademacher", n_probes: int = 1,
               rtol: float = 1e-5, atol: float = 1e-5, method: str = "scipy_rk45", t_min: float = 1e-5,
               seed: int = 0, batch_size: int = 64, shard_size: int = 1000, rank: int = 0, world: int = 1,
               device="cpu", progress: bool = True) -> dict:
    """Per-item NLL of data[first : first + count] (of the first n items) into shards of out_dir; resumes.
    probes: catalog.NLL_PROBES ('auto': exact up to catalog.EXACT_DIVERGENCE_DIMS state dimensions, else rademacher).

    data: uint8 images [N, C, H, W] or float32 points [N, d] (its kind must match the source's).
    dataset: identity of the data (path, sha256, split) for the manifest.
    """
    kind = "image" if data.dtype == np.uint8 else "points"
    if kind != source.kind or tuple(data.shape[1:]) != tuple(source.data_shape):
        raise ValueError(f"the model takes {source.kind} data of shape {list(source.data_shape)}, the split holds "
                         f"{kind} data of shape {list(data.shape[1:])}")
    if probes == "auto":  # the exact divergence costs a backward pass per state dimension: low dimension only
        state_dims = math.prod(data.shape[1:]) * (2 if isinstance(source.sde, PhaseSpaceSDE) else 1)
        probes = "exact" if state_dims <= EXACT_DIVERGENCE_DIMS else "rademacher"
    if probes not in PROBES:
        raise ValueError(f"probes must be one of {NLL_PROBES}, got {probes!r}")
    check_t_min(t_min)
    n = len(data) if n is None else n
    if n > len(data):
        raise ValueError(f"--n {n} exceeds the {len(data)} items of the split")
    count = check_slice(n, first, count, batch_size, shard_size)
    identity = {"source": source.identity, "sde": source.sde_name, "sde_params": source.sde_params,
                "network": source.network, "dataset": dataset, "n": n, "probes": probes,
                "n_probes": n_probes if probes != "exact" else 0, "rtol": rtol, "atol": atol, "method": method,
                "t_min": t_min, "seed": seed, "batch_size": batch_size, "shard_size": shard_size}

    def make_shard(a: int, b: int, bar):
        rows = []
        edges = batch_edges(a, b, batch_size, aligned=True)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            x = dequantize_per_sample(data[lo:hi], seed, lo) if kind == "image" \
                else torch.from_numpy(np.ascontiguousarray(data[lo:hi])).float()
            result = ode_likelihood(source.sde, source.score_fn, x.to(device), t_min=t_min, probes=probes,
                                    n_probes=n_probes, rtol=rtol, atol=atol, method=method, seed=seed, first_index=lo,
                                    bpd_offset=7.0 if kind == "image" else None)
            bpd = result.bpd if result.bpd is not None else torch.full_like(result.nll_nats, float("nan"))
            columns = [result.nll_nats.double().cpu(), bpd.double().cpu(),
                       torch.full((hi - lo,), float(result.nfe), dtype=torch.float64)]
            if result.probe_var is not None:  # a 4th column with 2 or more probes: the probes' variance per item
                per_unit = 1.0 if kind != "image" else (math.prod(data.shape[1:]) * math.log(2.0)) ** -2
                columns.append(result.probe_var.double().cpu() * per_unit)  # in the unit of the metric
            rows.append(torch.stack(columns, 1).numpy())
            bar.update(hi - lo)
        array = np.concatenate(rows)
        return array, float(array[:, 2].mean())

    plan = ShardPlan(n, first, count, shard_size, rank, world)
    columns = 4 if probes != "exact" and n_probes > 1 else 3
    return fill_shards(Path(out_dir), identity, "nll", [columns], make_shard, plan, device=device, progress=progress,
                       unit="item")


def nll_summary(out_dir: str | Path, *, data: np.ndarray | None = None, exact_law=None) -> dict:
    """{'metric', 'value', 'stderr', 'nfe', 'n', 'identity', 'variance', 'exact', 'items'} of a complete NLL
    directory (bits/dim for images, nats for points; items: [n] each item's value).

    variance: {'between_items'} (the variance of the items' estimates) and, where each item had 2 or more probes,
    'probes' (the part the Hutchinson probes add to it: the mean over items of their probe variance / probes), and
    'data' (the rest). exact_law (a cldsgm.oracles.GaussianMixture) with the evaluated points `data`: the exact NLL
    of the law on the same points, and the paired gap estimate - exact with its standard error.
    """
    values, manifest = load_samples(out_dir)
    images = not np.isnan(values[:, 1]).all()
    column = values[:, 1] if images else values[:, 0]
    n = len(column)
    stderr = float(column.std(ddof=1) / math.sqrt(n)) if n > 1 else None
    between = float(column.var(ddof=1)) if n > 1 else None
    variance = {"between_items": between, "unit": "bits/dim" if images else "nats"}
    probes = manifest["identity"]["n_probes"]
    if values.shape[1] > 3 and probes > 1 and between is not None:
        probe_part = float(values[:, 3].mean() / probes)  # column 3 is in the metric's unit
        variance.update({"probes": probe_part, "data": between - probe_part})
    out = {"metric": "nll_bpd" if images else "nll_nats", "value": float(column.mean()), "stderr": stderr,
           "nfe": float(values[:, 2].mean()), "n": n, "identity": manifest["identity"], "variance": variance,
           "items": column}
    if exact_law is not None and data is not None and not images:
        exact = -exact_law.log_prob(torch.from_numpy(np.asarray(data[:n], np.float64))).numpy()
        gap = values[:, 0] - exact
        out["exact"] = {"value": float(exact.mean()), "stderr": float(exact.std(ddof=1) / math.sqrt(n)),
                        "gap": float(gap.mean()), "gap_stderr": float(gap.std(ddof=1) / math.sqrt(n)), "n": n}
    return out


def nll_interval(result: dict, resamples: int, seed: int) -> dict:
    """The interval fields of an NLL record from nll_summary's result: a basic bootstrap over the items with
    `resamples` (resampled by (seed, n): paired with every model on the same items), else a normal 95 % interval
    from the items' standard error (data and probes together), else none."""
    if resamples:
        from cldsgm.records import measured
        from cldsgm.stats import resample_counts

        replicates = resample_counts(result["n"], resamples, seed) @ result["items"] / result["n"]
        fields = measured(result["metric"], result["value"], replicates, seed,
                          method=f"basic bootstrap over the {result['n']} items")
        fields.pop("value")
        return fields
    if result["stderr"] is not None:
        half = 1.96 * result["stderr"]
        return {"ci_low": result["value"] - half, "ci_high": result["value"] + half,
                "ci_method": f"normal, 1.96 standard errors over {result['n']} items"}
    return {}
