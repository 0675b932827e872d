"""Compile time of NCSN++ by torch.compile (inductor): each repeated block once (regional) against the whole
network, forward + backward of one bf16-autocast training step, with the step time after compilation beside the
eager one. Each scope runs in a fresh process (no graph cache shared between them: TORCHINDUCTOR_CACHE_DIR is a new
temporary folder per run), so the figure is a cold compilation.

    python benchmarks/compile_time.py --threads 2 --network ncsnpp_cifar10_cld --batch 2     # CPU
    python benchmarks/compile_time.py --device cuda --batch 128                               # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def measure(args) -> dict:
    import torch

    from cldsgm.losses import score_matching_loss
    from cldsgm.models.fast import compile_blocks, set_norm_dtype
    from cldsgm.models.registry import build_network
    from cldsgm.sde import build_sde

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_network(args.network).to(device)
    sde = build_sde("cld")
    x0 = torch.rand(args.batch, 3, 32, 32, device=device) * 2 - 1
    set_norm_dtype(net, "compute")
    if args.scope == "blocks":
        compile_blocks(net)
    elif args.scope == "network":
        net = torch.compile(net)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = score_matching_loss(sde, net, x0, objective="hsm", weighting="reweightedv2", mixed_score=True,
                                       reduction="sum").mean()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"scope": args.scope, "first_step_s": first, "step_s_median": times[len(times) // 2],
            "step_s_min": times[0], "step_s_max": times[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="ncsnpp_cifar10_cld")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scopes", default="eager,blocks,network")
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--scope", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scope:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    for scope in args.scopes.split(","):
        with tempfile.TemporaryDirectory(prefix="compile-time-") as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(args.threads)}
            cmd = [sys.executable, __file__, "--scope", scope, "--network", args.network, "--batch", str(args.batch),
                   "--threads", str(args.threads), "--device", args.device, "--repeats", str(args.repeats)]
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout_s)
                row = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
                    "scope": scope, "error": done.stderr[-500:]}
            except subprocess.TimeoutExpired:
                row = {"scope": scope, "error": f"over {args.timeout_s:.0f} s"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    eager = next((r for r in rows if r["scope"] == "eager" and "step_s_median" in r), None)
    print(f"\n{args.network}, batch {args.batch}, {args.device}, {args.threads} threads, bf16 autocast, "
          "GroupNorm in bf16")
    for r in rows:
        if "error" in r:
            print(f"{r['scope']:<8} {r['error'][-200:]}")
            continue
        compile_s = r["first_step_s"] - (eager["step_s_median"] if eager else 0.0)
        print(f"{r['scope']:<8} first step {r['first_step_s']:7.1f} s (compilation ~{compile_s:6.1f} s), step "
              f"{r['step_s_median']:.3f} s [{r['step_s_min']:.3f}, {r['step_s_max']:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
