"""Sampler benchmark on exact scores: samplers x NFE budgets x strides, distance to the true data law.

No network is involved: the score is the analytic score of a Gaussian-mixture data law (cldsgm.oracles), so
the distances measure the samplers' discretisation error alone. Each row reports sliced W2 and energy
distance between the samples and fresh exact data, the NFE actually spent and the wall time; an 'exact' row
gives the noise floor (two independent exact sample sets of the same size).
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from cldsgm import catalog
from cldsgm.eval.distances import energy_distance, sliced_wasserstein
from cldsgm.oracles import oracle_law
from cldsgm.samplers import check_sampler, generate

__all__ = ["parse_sampler", "sampler_bench"]


def parse_sampler(spec: str) -> tuple[str, dict]:
    """'name' or 'name:key=value:...' -> (sampler, options); values are read as numbers where they are numbers.
    Names are those of cldsgm.catalog.bench_presets(), e.g. 'conjugate:order=3', 'sscs:precision_sigma=0.02'."""
    name, *pairs = spec.split(":")
    presets = catalog.bench_presets()  # every sampler by name, and the SSCS variants sscs-ref and sscs-fix
    if name not in presets:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(presets)}")
    sampler, options = presets[name]
    options = dict(options)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"sampler option {pair!r} in {spec!r} is not KEY=VALUE")
        try:
            options[key] = int(value)
        except ValueError:
            try:
                options[key] = float(value)
            except ValueError:
                options[key] = value
    return sampler, options


def _check(sde, names) -> None:
    for name in names:
        check_sampler(sde, parse_sampler(name)[0])


def sampler_bench(sde, sde_name: str, samplers, nfes, stridings=("uniform",), *, n_samples: int = 5000,
                  dataset: str = "diamond", seed: int = 0, t_min: float = 1e-3, ode_tol: float = 1e-5,
                  energy_samples: int = 5000) -> pd.DataFrame:
    """Run every (sampler, striding, nfe) and return one row each, plus the 'exact' noise-floor row.

    The ODE sampler is adaptive: it gets one row per striding-free run at rtol = atol = ode_tol.
    """
    mix = oracle_law(dataset)  # ValueError naming the choices
    _check(sde, samplers)
    score = mix.score_fn(sde)
    ref = mix.sample(n_samples, generator=torch.Generator().manual_seed(10_000 + seed))
    ref2 = mix.sample(n_samples, generator=torch.Generator().manual_seed(20_000 + seed))
    m = min(energy_samples, n_samples)

    def row(sampler, striding, budget, nfe, x, wall):
        return {"sde": sde_name, "dataset": dataset, "sampler": sampler, "striding": striding, "nfe_budget": budget,
                "nfe": nfe, "sliced_w2": sliced_wasserstein(x, ref), "energy": energy_distance(x[:m], ref[:m]),
                "wall_s": wall, "n": n_samples}

    rows = [row("exact", "-", 0, 0, ref2, 0.0)]
    for name in samplers:
        sampler, options = parse_sampler(name)
        runs = [("-", None)] if sampler == "ode" else [(s, nfe) for s in stridings for nfe in nfes]
        for striding, nfe in runs:
            extra = {"rtol": ode_tol, "atol": ode_tol} if sampler == "ode" else {"striding": striding}
            start = time.perf_counter()
            result = generate(sde, score, n_samples, (mix.dim,), sampler=sampler, nfe=nfe, t_min=t_min, seed=seed,
                              dtype=torch.float64, **extra, **options)
            rows.append(row(name, striding, nfe or 0, result.nfe, result.x, time.perf_counter() - start))
    return pd.DataFrame(rows)
