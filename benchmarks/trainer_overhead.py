"""The CPU trainer's overhead: `cldsgm.training.train` against a bare loop of the same pieces, in one process.

toy_mlp, CLD/HSM, batch 512 on the diamond data, fp32, tracking off. The bare loop runs the same maths: a random
batch, t and eps, the loss, Adam, gradient clipping and the EMA, with nothing else (no per-step seeding, no
logging, no checkpoints, no progress bar). The trainer's per-step time is taken between two runs of different
length (start-up cancels out). Prints iterations/s of both and the ratio trainer / bare, for each repeat.
    python benchmarks/trainer_overhead.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cldsgm.config import resolve_config
from cldsgm.data.prepared import prepared_paths, save_prepared
from cldsgm.losses import sample_time, score_matching_loss
from cldsgm.models.registry import build_network
from cldsgm.oracles import diamond
from cldsgm.sde import build_sde
from cldsgm.training import train

BATCH = 512


def _config(data_path: Path, steps: int) -> dict:
    return resolve_config({
        "data": {"path": str(data_path)},
        "sde": {"name": "cld", "params": {"numerical_eps": 1e-6}},
        "loss": {"objective": "hsm", "weighting": "reweightedv2", "mixed_score": False, "reduction": "sum"},
        "model": {"name": "toy_mlp"},
        "optim": {"lr": 1e-3, "grad_clip": 1.0},
        "train": {"steps": steps, "batch_size": BATCH, "checkpoint_every": 10**9, "log_every": 10**9,
                  "device": "cpu"},
        "tracking": {"enabled": False},
    })


def trainer_rate(data_path: Path, short: int, long: int, workdir: Path) -> float:
    train(_config(data_path, 20), workdir / "warmup", progress=False)  # first-call costs (lazy imports, allocator)
    times = {}
    for steps in (short, long):
        run = workdir / f"run{steps}"
        start = time.perf_counter()
        train(_config(data_path, steps), run, progress=False)
        times[steps] = time.perf_counter() - start
    return (long - short) / (times[long] - times[short])


def bare_rate(data: torch.Tensor, steps: int) -> float:
    sde = build_sde("cld", numerical_eps=1e-6)
    torch.manual_seed(0)
    net = build_network("toy_mlp")
    ema = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    start = None
    for step in range(steps + 5):
        if step == 5:  # warm-up steps excluded
            start = time.perf_counter()
        x0 = data[torch.randint(len(data), (BATCH,), generator=generator)]
        t = sample_time(BATCH, 1e-5, generator=generator)
        eps = torch.randn(BATCH, 4, generator=generator)
        loss = score_matching_loss(sde, net, x0, objective="hsm", weighting="reweightedv2", mixed_score=False,
                                   reduction="sum", t=t, eps=eps).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for e, p in zip(ema, net.parameters(), strict=True):
                e.lerp_(p, 1 - 0.999)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        points = diamond().sample(20_000, generator=torch.Generator().manual_seed(0)).float()
        save_prepared(workdir, "diamond", "train", points.numpy(), kind="points", source="oracle")
        data_path = prepared_paths(workdir, "diamond", "train")[0]
        ratios, trainers, bares = [], [], []
        print(f"toy_mlp CLD/HSM batch {BATCH}, fp32, {args.threads} thread(s), {args.steps} timed steps")
        for repeat in range(args.repeats):
            trainer = trainer_rate(data_path, 100, 100 + args.steps, workdir / f"r{repeat}")
            bare = bare_rate(points.float(), args.steps)
            ratios.append(trainer / bare)
            trainers.append(trainer)
            bares.append(bare)
            print(f"  repeat {repeat + 1}: trainer {trainer:7.1f} it/s, bare loop {bare:7.1f} it/s, "
                  f"ratio {ratios[-1]:.3f}")
        spread = f" (min {min(ratios):.3f}, max {max(ratios):.3f})" if len(ratios) > 1 else ""
        print(f"trainer / bare loop: median {statistics.median(ratios):.3f}{spread}; best trainer / best bare "
              f"{max(trainers) / max(bares):.3f} (the shared cores slow single repeats down, never up)")


if __name__ == "__main__":
    main()
