"""Training-step throughput (images/s) of a network configuration on the current device.

Times complete steps (forward, HSM loss, backward, clip, Adam) after warm-up steps, for each precision asked
for, and prints img/s plus the ratio to fp32 measured in the same run. On a GPU the paper's CIFAR-10 model:
    python benchmarks/train_throughput.py --network ncsnpp_cifar10_cld --batch 128 --precision fp32,bf16
On a CPU, a reduced width keeps it short:
    python benchmarks/train_throughput.py --network ncsnpp_cifar10_cld --nf 32 --num-res-blocks 2 --batch 16
"""

from __future__ import annotations

import argparse
import time

import torch

from cldsgm.losses import score_matching_loss
from cldsgm.models.registry import PRESETS, build_network, count_parameters
from cldsgm.sde import SDES, VPSDE, build_sde


def step_rate(net, sde, x0, precision, steps, warmup, device) -> float:
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
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
    parser.add_argument("--precision", default="fp32", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--nf", type=int, default=None)
    parser.add_argument("--num-res-blocks", type=int, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = {k: v for k, v in (("nf", args.nf), ("num_res_blocks", args.num_res_blocks)) if v is not None}
    torch.manual_seed(0)
    net = build_network(args.network, **overrides).to(device)
    sde = build_sde(args.sde)
    options = PRESETS[args.network][1]
    channels = options["in_channels"] // len(sde.state_blocks)
    shape = (args.batch, channels, options["image_size"], options["image_size"]) if "image_size" in options \
        else (args.batch, channels)
    x0 = torch.randn(shape, device=device).clamp(-1, 1)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {name}; network {args.network} {overrides or ''} ({count_parameters(net):,} params); "
          f"sde {args.sde}; batch {args.batch}; {args.steps} timed steps after {args.warmup} warm-up")
    rates = {}
    for precision in args.precision.split(","):
        rates[precision] = step_rate(net, sde, x0, precision, args.steps, args.warmup, device)
        ratio = f"  ({rates[precision] / rates['fp32']:.2f}x fp32)" if "fp32" in rates and precision != "fp32" else ""
        print(f"{precision:>5}: {rates[precision]:10.1f} img/s{ratio}")


if __name__ == "__main__":
    main()
