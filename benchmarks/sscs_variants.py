"""Accuracy of the SSCS variants and Euler-Maruyama with the exact score (no network), CLD on 'diamond'.

Prints sliced W2 and energy distance to fresh exact samples, averaged over seeds, for each sampler variant,
striding and NFE, plus the noise floor (two independent exact sample sets). The default SSCS variant in
cldsgm.samplers is chosen from this table. Run: python benchmarks/sscs_variants.py [--n 20000 --seeds 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from cldsgm import catalog
from cldsgm.eval.distances import energy_distance, sliced_wasserstein
from cldsgm.oracles import diamond
from cldsgm.samplers import generate
from cldsgm.sde import CLD


def _sscs(score_time: str, score_step: str, second_half: str = "exact") -> tuple[str, dict]:
    # every option spelled out, so that a change of the defaults cannot relabel a row
    return "sscs", {"score_time": score_time, "score_step": score_step, "second_half": second_half}


VARIANTS = {
    "em": ("em", {}),
    "sscs[start,euler,ref-half] (reference)": _sscs("start", "euler", "reference"),
    "sscs[start,euler]": _sscs("start", "euler"),
    "sscs[midpoint,euler]": _sscs("midpoint", "euler"),
    "sscs[start,exponential]": _sscs("start", "exponential"),
    "sscs[midpoint,exponential] (default)": _sscs("midpoint", "exponential"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nfe", default="10,20,50,100")
    parser.add_argument("--energy-n", type=int, default=5000, help="subsample for the O(n^2) energy distance")
    args = parser.parse_args()
    mix, sde = diamond(), CLD(numerical_eps=1e-6)  # the CLD toy configuration
    score = mix.score_fn(sde)
    refs = [mix.sample(args.n, generator=torch.Generator().manual_seed(1000 + s)) for s in range(args.seeds + 1)]
    floor_sw = sum(sliced_wasserstein(refs[s], refs[s + 1]) for s in range(args.seeds)) / args.seeds
    floor_ed = sum(energy_distance(refs[s][:args.energy_n], refs[s + 1][:args.energy_n])
                   for s in range(args.seeds)) / args.seeds
    print(f"noise floor (exact vs exact): sliced W2 {floor_sw:.4f}  energy {floor_ed:.2e}  (n={args.n})")
    print(f"{'striding':<10}{'nfe':>5}  {'variant':<42}{'sliced W2':>10}{'energy':>11}{'wall s':>8}")
    for striding in catalog.STRIDINGS:
        for nfe in (int(v) for v in args.nfe.split(",")):
            for label, (name, options) in VARIANTS.items():
                sw = ed = wall = 0.0
                for s in range(args.seeds):
                    start = time.perf_counter()
                    result = generate(sde, score, args.n, (2,), sampler=name, nfe=nfe, striding=striding, seed=s,
                                      dtype=torch.float64, **options)
                    wall += time.perf_counter() - start
                    sw += sliced_wasserstein(result.x, refs[s])
                    ed += energy_distance(result.x[:args.energy_n], refs[s][:args.energy_n])
                k = args.seeds
                print(f"{striding:<10}{nfe:>5}  {label:<42}{sw / k:>10.4f}{ed / k:>11.2e}{wall / k:>8.2f}")


if __name__ == "__main__":
    main()
