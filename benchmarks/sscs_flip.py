"""The SSCS flip under control : the exact score of a diamond whose components have std s plays a
model of known smoothness (s = 0.04 the data's own; 0.1 and 0.2 a smoother score), sampled by SSCS with the
reference Euler score step and with the exponential step at a sweep of sigma_d, plus the sigma_d that
cldsgm.samplers.precision estimates from that score's Jacobian. Sliced W2 (512 projections) to the law's own
fresh samples, quadratic striding, n = 20,000, seed 0. The optimum sigma_d follows s, and the point-mass default
(sigma_d = 0) loses to the reference step once s is large: the flip seen on trained networks.
Run: python benchmarks/sscs_flip.py [--n 20000 --stds 0.04 0.1 0.2 --nfe 10 20]
"""

from __future__ import annotations

import argparse

import torch

from cldsgm import catalog
from cldsgm.eval.distances import sliced_wasserstein
from cldsgm.oracles import diamond
from cldsgm.samplers import generate
from cldsgm.samplers.precision import model_sigma_d
from cldsgm.sde import build_sde

REFERENCE_SSCS = catalog.bench_presets()["sscs-ref"][1]  # the reference code's SSCS variant
SWEEP = (0.0, 0.02, 0.04, 0.08, 0.12, 0.2, 0.32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--stds", type=float, nargs="+", default=[0.04, 0.1, 0.2])
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--sdes", nargs="+", default=list(catalog.PHASE_SPACE))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| score std s | SDE | NFE | sigma_d estimated | reference SSCS | " +
          " | ".join(f"sigma_d {s:g}" for s in SWEEP) + " | estimated |")
    print("|---" * (6 + len(SWEEP)) + "|")
    for std in args.stds:
        law = diamond(std)
        reference = law.sample(args.n, generator=torch.Generator().manual_seed(10_000))
        for sde_name in args.sdes:
            sde = build_sde(sde_name)
            score = law.score_fn(sde)
            estimate = model_sigma_d(sde, score, law.sample(2000, generator=torch.Generator().manual_seed(1)),
                                     1e-3)["sigma_d"]

            def sw2(options, nfe, sde=sde, score=score, reference=reference):
                x = generate(sde, score, args.n, (2,), sampler="sscs", nfe=nfe, striding="quadratic",
                             dtype=torch.float64, **options).x
                return sliced_wasserstein(x, reference)

            for nfe in args.nfe:
                values = [sw2({"precision_sigma": s}, nfe) for s in SWEEP]
                best = min(range(len(SWEEP)), key=values.__getitem__)
                cells = [f"**{v:.4f}**" if i == best else f"{v:.4f}" for i, v in enumerate(values)]
                print(f"| {std:g} | {sde_name} | {nfe} | {estimate:g} | {sw2(REFERENCE_SSCS, nfe):.4f} | "
                      + " | ".join(cells) + f" | {sw2({'precision_sigma': estimate}, nfe):.4f} |", flush=True)


if __name__ == "__main__":
    main()
