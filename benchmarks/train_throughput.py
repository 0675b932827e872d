"""Training-step throughput (images/s) and model-FLOPs utilisation of a network on the current device.

Times complete steps (forward, HSM loss, backward, clip, Adam) after warm-up steps for plain fp32 eager and for
each variant asked for (precision x channels-last x fused Adam x torch.compile), and prints img/s, the speed-up
over fp32 eager measured in the same run, MFU (FLOPs of forward + backward of one step counted by
torch.utils.flop_counter, over step time and the device's dense bf16 peak) and peak memory. On a GPU:
    python benchmarks/train_throughput.py --network ncsnpp_cifar10_cld --batch 128 \
        --variants bf16,bf16+cl+fused,bf16+cl+fused+compile
On a CPU, a reduced width keeps it short (no MFU: no peak figure for CPUs):
    python benchmarks/train_throughput.py --network ncsnpp_cifar10_cld --nf 32 --num-res-blocks 2 --batch 16
"""

from __future__ import annotations

import argparse
import time

import torch

from cldsgm.losses import score_matching_loss
from cldsgm.models.registry import PRESETS, build_network
from cldsgm.sde import SDES, VPSDE, build_sde

# dense bf16 tensor-core peaks (no sparsity), FLOP/s, by device-name substring
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "A10G": 70e12}


def step_flops(net, sde, x0) -> float:
    """FLOPs of one training step's forward and backward (2 x multiply-adds), counted on the real shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    objective = "dsm" if isinstance(sde, VPSDE) else "hsm"
    counter = FlopCounterMode(display=False)
    with counter:
        score_matching_loss(sde, net, x0, objective=objective).mean().backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def step_rate(net, sde, x0, precision, steps, warmup, device, fused=False) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, **({"fused": True} if fused else {}))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    objective = "dsm" if isinstance(sde, VPSDE) else "hsm"
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = score_matching_loss(sde, net, x0, objective=objective).mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(x0) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="ncsnpp_cifar10_cld", choices=sorted(PRESETS))
    parser.add_argument("--sde", default="cld", choices=sorted(SDES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--variants", default="bf16",
                        help="comma-separated; each a precision (fp32, bf16, fp16) with +cl (channels-last), +fused "
                             "(fused Adam), +compile (torch.compile, inductor); fp32 eager always runs first")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--nf", type=int, default=None)
    parser.add_argument("--num-res-blocks", type=int, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {k: v for k, v in (("nf", args.nf), ("num_res_blocks", args.num_res_blocks)) if v is not None}
    sde = build_sde(args.sde)
    options = PRESETS[args.network][1]
    channels = options["in_channels"] // len(sde.state_blocks)
    shape = (args.batch, channels, options["image_size"], options["image_size"]) if "image_size" in options \
        else (args.batch, channels)
    x0 = torch.randn(shape, device=device).clamp(-1, 1)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    torch.manual_seed(0)
    flops = step_flops(build_network(args.network, **overrides).to(device), sde, x0)
    print(f"device {name}; torch {torch.__version__}; network {args.network} {overrides or ''}; sde {args.sde}; "
          f"batch {args.batch}; {args.steps} timed steps after {args.warmup} warm-up; "
          f"{flops / args.batch / 1e9:.2f} GFLOP per image per step (forward + backward)")
    rates = {}
    for variant in ["fp32", *[v for v in args.variants.split(",") if v and v != "fp32"]]:
        precision, *flags = variant.split("+")
        torch.manual_seed(0)
        net = build_network(args.network, **overrides).to(device)
        if "cl" in flags:
            net = net.to(memory_format=torch.channels_last)
        model = torch.compile(net) if "compile" in flags else net
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rates[variant] = step_rate(model, sde, x0, precision, args.steps, args.warmup, device,
                                   fused="fused" in flags)
        memory = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
        mfu = f", MFU {rates[variant] / args.batch * flops / peak:.1%}" if peak else ""
        print(f"{variant:>28}: {rates[variant]:10.1f} img/s ({rates[variant] / rates['fp32']:.2f}x fp32 eager)"
              f"{mfu}{memory}")


if __name__ == "__main__":
    main()
