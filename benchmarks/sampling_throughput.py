"""Sampling throughput per network preset: images/s, NFE/s, and the sampler's own overhead vs network time.

For each sampler (EM, SSCS, ODE) it samples one batch with randomly initialised weights of the preset (the
speed does not depend on the weights) through the same path as `cldsgm sample` (fixed-row network blocks,
per-sample noise, quantisation), timing the network calls separately. The sampler overhead is
(wall - network time) / network time: the cost of everything that is not the network (noise, SDE
coefficients, the solver), which on a GPU should stay under 5 %. Repeats give the spread.

    python benchmarks/sampling_throughput.py --network ncsnpp_digits --batch 256 --threads 1
    python benchmarks/sampling_throughput.py --network toy_mlp --batch 5000 --threads 1
    python benchmarks/sampling_throughput.py --network ncsnpp_cifar10_cld --batch 512 --nfe 150 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cldsgm import catalog
from cldsgm.models.registry import PRESETS, build_network
from cldsgm.models.score import ScoreParameterisation
from cldsgm.samplers import generate
from cldsgm.sampling import quantize_images
from cldsgm.sde import build_sde
from cldsgm.sources import FixedRowsNet

DATA_SHAPES = {"toy_mlp": (2,), "toy_resnet": (2,), "ncsnpp_digits": (1, 8, 8)}


class TimedNet(torch.nn.Module):
    """Wraps a network and adds up the wall time of its calls (synchronised on CUDA)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seconds = net, 0.0

    def forward(self, u, t):
        if u.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.net(u, t)
        if out.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        return out


def run_once(network, sampler, nfe, batch, device, precision, net_batch):
    sde = build_sde(next((name for name in catalog.SDES if network.endswith(f"_{name}")), "cld"))
    shape = DATA_SHAPES.get(network, (3, 32, 32))
    timed = TimedNet(build_network(network).to(device).eval())
    score = ScoreParameterisation(sde, objective="hsm", mixed_score=True).score_fn(
        FixedRowsNet(timed, net_batch or batch, precision))
    extra = {"rtol": 1e-5, "atol": 1e-5} if sampler == "ode" else {"nfe": nfe}
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        result = generate(sde, score, batch, shape, sampler=sampler, device=device, **extra)
        if len(shape) == 3:
            quantize_images(result.x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return {"wall": wall, "net": timed.seconds, "nfe": result.nfe}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="ncsnpp_digits", choices=sorted(PRESETS))
    parser.add_argument("--samplers", default="em,sscs,ode")
    parser.add_argument("--nfe", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--net-batch", type=int, default=None, help="Rows per network call (default: --batch).")
    parser.add_argument("--precision", default="fp32", choices=catalog.PRECISIONS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# {args.network}, batch {args.batch}, NFE {args.nfe} (ODE: adaptive, tol 1e-5), {args.precision}, "
          f"{name}, torch {torch.__version__}, {args.repeats} repeats (median [min, max])")
    print(f"{'sampler':>8} {'img/s':>22} {'NFE/s':>10} {'NFE':>5} {'overhead':>24} {'50k images':>11}")
    for sampler in args.samplers.split(","):
        run_once(args.network, sampler, min(args.nfe, 5), min(args.batch, 8), device, args.precision,
                 args.net_batch)  # warm-up
        runs = [run_once(args.network, sampler, args.nfe, args.batch, device, args.precision, args.net_batch)
                for _ in range(args.repeats)]
        rates = [args.batch / r["wall"] for r in runs]
        overheads = [(r["wall"] - r["net"]) / r["net"] for r in runs]
        nfe = statistics.median(r["nfe"] for r in runs)
        print(f"{sampler:>8} {statistics.median(rates):>8.1f} [{min(rates):.1f}, {max(rates):.1f}] "
              f"{statistics.median(rates) * nfe:>10.0f} {nfe:>5.0f} "
              f"{100 * statistics.median(overheads):>7.1f} % [{100 * min(overheads):.1f}, "
              f"{100 * max(overheads):.1f}] {50_000 / statistics.median(rates) / 60:>8.1f} min")
    if device.type == "cuda":
        print(f"# peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
