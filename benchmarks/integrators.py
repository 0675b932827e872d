"""Test T4 of docs/samplers.md: the new integrators against the default SSCS, EM and the PF-ODE on the exact-score
diamond oracle (CLD, beta = 4, M^-1 = 4, gamma = 0.04; t_min = 1e-3; sliced W2 against fresh exact data).

Every figure is measured in this run: mean and sd over seeds, and the ratios the acceptance lines ask for.
    python benchmarks/integrators.py                 # n = 50,000, seeds 1-3 (a few minutes on one thread)
    python benchmarks/integrators.py --n 5000 --seeds 1   # a quick look
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from cldsgm import catalog
from cldsgm.bench import sampler_bench
from cldsgm.sde import build_sde

# the rows compared (sampler_bench specs): EM, the default SSCS and the second-order one (catalog.bench_presets)
STOCHASTIC = [catalog.sampler("em").name, catalog.sampler("sscs").name, "sscs-fix"]
NFES = [10, 20, 50, 100]
LAMBDA_DDIM = "conjugate:predict=eps_cholesky:order=0:lam=0.5"  # the spec's lambda-DDIM (T4 lines)
LAMBDA_DDIM_0 = "conjugate:predict=eps_cholesky:order=0"


def run(n: int, seeds: list[int], sde_name: str) -> pd.DataFrame:
    sde = build_sde(sde_name)
    frames = []
    for seed in seeds:
        table = sampler_bench(sde, sde_name, STOCHASTIC, NFES, list(catalog.STRIDINGS), n_samples=n, seed=seed)
        det = sampler_bench(sde, sde_name, ["euler-ode", LAMBDA_DDIM, LAMBDA_DDIM_0, "conjugate"], [50, 100],
                            ["quadratic"], n_samples=n, seed=seed)
        ode = sampler_bench(sde, sde_name, ["ode"], [0], n_samples=n, seed=seed, ode_tol=1e-5)
        frames += [table.assign(seed=seed), det.assign(seed=seed), ode.assign(seed=seed)]
    return pd.concat(frames, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--sde", default="cld", choices=list(catalog.PHASE_SPACE))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    df = run(args.n, seeds, args.sde)
    if args.csv:
        df.to_csv(args.csv, index=False)
    stats = df.groupby(["sampler", "striding", "nfe_budget"])["sliced_w2"].agg(["mean", "std"]).reset_index()
    pd.set_option("display.width", 160)
    print(f"sde {args.sde}, diamond, n = {args.n}, seeds {seeds}, {args.threads} thread(s); sliced W2 mean (sd)")
    wide = stats.assign(cell=stats["mean"].map("{:.4f}".format) + " (" + stats["std"].fillna(0).map("{:.4f}".format)
                        + ")").pivot_table(index=["striding", "nfe_budget"], columns="sampler", values="cell",
                                           aggfunc="first")
    print(wide.to_string())

    def mean(sampler, striding, nfe):
        row = stats[(stats.sampler == sampler) & (stats.striding == striding) & (stats.nfe_budget == nfe)]
        return float(row["mean"].iloc[0]), float(row["std"].fillna(0).iloc[0])

    print("\nT4 acceptance lines (ratio measured here -> bound):")
    verdicts = []

    def check(label, value, bound):
        ok = value <= bound
        verdicts.append(ok)
        print(f"  {'PASS' if ok else 'FAIL'}  {label}: {value:.3f} (<= {bound})")

    for striding, nfe, bound in (("uniform", 50, 0.5), ("quadratic", 20, 0.5), ("uniform", 100, 0.75),
                                 ("quadratic", 10, 0.75)):
        check(f"sscs-fix / sscs at {striding} {nfe}", mean("sscs-fix", striding, nfe)[0]
              / mean("sscs", striding, nfe)[0], bound)
    for striding in catalog.STRIDINGS:
        for nfe in NFES:
            fix, (em, em_sd) = mean("sscs-fix", striding, nfe)[0], mean("em", striding, nfe)
            check(f"sscs-fix - (EM + 2 sd) at {striding} {nfe}", fix - (em + 2 * em_sd), 0.0)
    check("conjugate lam 0.5 / Euler PF-ODE at quadratic 50",
          mean(LAMBDA_DDIM, "quadratic", 50)[0] / mean("euler-ode", "quadratic", 50)[0], 0.25)
    check("conjugate lam 0 at quadratic 100 / RK45 1e-5",
          mean(LAMBDA_DDIM_0, "quadratic", 100)[0] / mean("ode", "-", 0)[0], 1.5)
    check("conjugate (x0, order 2, the default) at quadratic 50 / RK45 1e-5",
          mean("conjugate", "quadratic", 50)[0] / mean("ode", "-", 0)[0], 1.5)
    print(f"\n{sum(verdicts)} of {len(verdicts)} lines pass")


if __name__ == "__main__":
    main()
