"""Three readings of a trained network's stiffness near the data, each turned into the sigma_d it implies
(cldsgm.samplers.precision.sigma_from_stiffness), to test whether any explains the sigma_d sweep's optimum.

1. per dimension: a diagonal Hutchinson estimate -E[z * (J z)] over the pilot batch, quantiles over dimensions;
2. along the sampler's trajectory: the stiffness at the states SSCS (sigma_d = --sigma-d, quadratic --nfe) visits;
3. a secant over the step's scale: -(s(b + eps z) - s(b)) . z eps / |eps z|^2 for eps = 0.001 ... 1.
Run: python benchmarks/sscs_stiffness_readings.py results/default/runs/digits_cld [--nfe 10 --sigma-d 0.01]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cldsgm.samplers import generate
from cldsgm.samplers.precision import BLOCKS, _perturb, informative_block, sigma_from_stiffness
from cldsgm.sampling import PILOT_N
from cldsgm.sources import checkpoint_source


def _rademacher(shape, generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, dtype=torch.float32) * 2 - 1


def _jvp_diag(sde, score_fn, u, t, block, generator, probes=4) -> torch.Tensor:
    """-E[z * d(s_b . z)/d b]: per sample and dimension of block b."""
    i = BLOCKS.index(block)
    acc = torch.zeros_like(sde.split(u)[i])
    for _ in range(probes):
        z_b = sde.split(_rademacher(u.shape, generator))[i]
        with torch.enable_grad():
            u_in = u.clone().requires_grad_(True)
            s_b = sde.split(score_fn(u_in, torch.tensor(t, dtype=torch.float64)))[i]
            (grad,) = torch.autograd.grad((s_b * z_b).sum(), u_in)
        acc -= sde.split(grad)[i] * z_b
    return acc / probes


def _sigma(sde, t, stiffness, block) -> float:
    return min(sigma_from_stiffness(sde, t, float(stiffness), block), 99.0)  # 99: flatter than any Gaussian


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--sigma-d", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = checkpoint_source(args.run)
    sde, score_fn = source.sde, source.score_fn
    x0 = source.pilot_data(PILOT_N).float()
    generator = torch.Generator().manual_seed(0)
    print("1. per dimension (quantiles 0 / 0.25 / 0.5 / 0.75 / 1 of the implied sigma_d over dimensions)")
    for t in (1e-3, 1e-2, 3e-2, 0.1):
        block = informative_block(sde, t)
        diag = _jvp_diag(sde, score_fn, _perturb(sde, x0, t, generator), t, block, generator).mean(0).flatten()
        sig = np.array([_sigma(sde, t, d, block) for d in diag.double()])
        mean = float(diag.mean())
        print(f"   t = {t:g} ({block}): mean stiffness {mean:.2f} -> {_sigma(sde, t, mean, block):.3f};"
              f" per dimension {np.round(np.quantile(sig, [0, .25, .5, .75, 1]), 3)}")
    print(f"2. along SSCS's trajectory (sigma_d {args.sigma_d}, quadratic NFE {args.nfe}, 256 samples)")
    visited = []

    def recording(u, t):
        visited.append((u.detach().clone(), float(t.flatten()[0])))
        return score_fn(u, t)

    with torch.inference_mode():
        generate(sde, recording, 256, source.data_shape, sampler="sscs", nfe=args.nfe, striding="quadratic", seed=0,
                 precision_sigma=args.sigma_d)
    for u, t in visited:
        if t <= 0.3:
            block = informative_block(sde, t)
            stiff = float(_jvp_diag(sde, score_fn, u.clone(), t, block, generator, probes=2).mean())
            print(f"   t = {t:.4g} ({block}): {stiff:.2f} -> {_sigma(sde, t, stiff, block):.3f}")
    print("3. secant over the step's scale (eps: stiffness -> sigma_d)")
    for t in (1e-3, 1e-2):
        block = informative_block(sde, t)
        i, tt = BLOCKS.index(block), torch.tensor(t, dtype=torch.float64)
        u = _perturb(sde, x0, t, generator)
        with torch.no_grad():
            s0 = sde.split(score_fn(u, tt))[i]
            row = []
            for eps in (1e-3, 1e-2, 0.1, 0.3, 1.0):
                step = sde.split(_rademacher(u.shape, generator))[i] * eps
                parts = list(sde.split(u))
                parts[i] = parts[i] + step
                stiff = float(-((sde.split(score_fn(sde.join(*parts), tt))[i] - s0) * step).sum() / (step**2).sum())
                row.append(f"{eps:g}: {stiff:.1f} -> {_sigma(sde, t, stiff, block):.3f}")
        print(f"   t = {t:g} ({block}): " + " | ".join(row))


if __name__ == "__main__":
    main()
