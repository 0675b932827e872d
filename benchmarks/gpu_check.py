"""The GPU figures in one run of at most 8 minutes: the network's fast paths first (regional compilation, GroupNorm
in bf16, the layout chosen by measurement, larger batches; sampling with weights cast once and CUDA graphs), against
the eager configs in the same run; then a profile, Inception features, the card's ceilings, a bf16 safety run and
the GPU-hours of the CIFAR-10 studies. Prints one table; writes it as JSON after every section.

Synthetic CIFAR-shaped data and random weights (speed does not depend on either): no dataset, checkpoint or
Inception file is needed. Sections run from the figure most likely to move to the least, each inside its share of
`--budget-s`; the compiled variants run in a child process cut off at the section's deadline, so a compilation that
overruns costs its share and no more. The time left is printed after every section.

    python benchmarks/gpu_check.py                                     # one H100/H200: at most 8 minutes
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/smoke.json   # every section at toy sizes on the CPU

The JSON goes to benchmarks/results/gpu_check_<card>_<date>.json unless --out says otherwise; commit it.

Sections (full sizes; --cpu-smoke shrinks every one):
- train: complete steps (forward, HSM loss with the mixed score, backward, clip, Adam) of the 107.6M CLD NCSN++ at
  batch 128. The config's bf16 + channels-last + fused Adam eagerly (the baseline); then, in a child process, each
  repeated block compiled by inductor with GroupNorm in bf16, in NCHW and in NHWC (compile seconds, img/s, the output
  on a fixed batch against float32 beside the eager bf16 one's), and the faster layout at batch 256 and 512; then
  fp32 eager and PSLD's network as configured, and `cldsgm.training.train` against the bare loop (its overhead).
  img/s, MFU over the dense bf16 peak (FLOPs counted by torch.utils.flop_counter), peak memory.
- sampling: SSCS at NFE 150 (quadratic striding) through the `cldsgm sample` path (fixed-row network blocks,
  per-sample noise, quantisation): bf16 autocast eagerly, then (child process) weights cast once to bf16 with each
  network call replayed from a CUDA graph, without and with compiled blocks: img/s, minutes for 50k, the sampler's
  own share of the wall time, and the score's difference from the eager float32 one on fixed states.
- profile: torch.profiler over training steps and SSCS steps of the fastest configuration: top kernels, idle share.
- inception: features of uint8 CIFAR images through `cldsgm.eval.fid.inception_features` (clean-fid's loader,
  legacy_tensorflow mode) with a TorchScript stand-in of the Inception-v3 architecture (random weights).
- ceilings: a 8192^3 bf16 matrix product (TFLOP/s) and a 2 GiB device copy (GB/s, read + write) on this card.
- safety: bf16 steps of the fastest configuration at the full learning rate (warm-up shortened to 200 steps, the
  stress case) against an fp32 run from the same weights on the same batches, until the deadline (2000 steps take
  about 3 minutes at 1,600 img/s: `--sections safety --budget-s 400` gives them a call of their own).
- hours: GPU-hours of the params/cifar10_*.yaml studies from the measured rates, rows from cldsgm.study.job_table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# dense bf16 tensor-core peaks (no sparsity), FLOP/s, by device-name substring (vendor datasheets)
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "A10G": 70e12}
FULL = {"network": "ncsnpp_cifar10_cld", "psld_network": "ncsnpp_cifar10_psld", "overrides": {}, "batch": 128,
        "large_batches": (256, 512), "image": 32, "steps": 20, "warmup": 5, "trainer_steps": (10, 50),
        "safety_steps": 2000, "fp32_steps": 300, "eval_batch": 512, "pool": 8192, "nfe": 150, "sample_batch": 500,
        "net_batch": 500, "inception_n": 10000, "inception_batch": 500, "profile_steps": 3, "matmul": 8192,
        "copy_gib": 2.0, "compile_backend": "inductor"}
SMOKE = {"network": "ncsnpp_cifar10_cld", "psld_network": "ncsnpp_cifar10_psld",
         "overrides": {"nf": 16, "num_res_blocks": 1}, "batch": 4, "large_batches": (8,), "image": 32, "steps": 2,
         "warmup": 1, "trainer_steps": (2, 4), "safety_steps": 12, "fp32_steps": 6, "eval_batch": 8, "pool": 32,
         "nfe": 4, "sample_batch": 4, "net_batch": 2, "inception_n": 4, "inception_batch": 2, "profile_steps": 1,
         "matmul": 256, "copy_gib": 0.01, "compile_backend": "aot_eager"}

# -- helpers ---------------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def autocast(device: torch.device, precision: str):
    from cldsgm.sources import compute_dtype

    dtype = compute_dtype(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def rel_rms(x: torch.Tensor, exact: torch.Tensor) -> float:
    """Relative RMS difference of x from exact (the denominator guarded: an all-zero output gives a finite ratio)."""
    return float((x - exact).square().mean().sqrt() / exact.square().mean().sqrt().clamp_min(1e-30))


class Results:
    """The JSON document, rewritten atomically after every section so that a cut-short run keeps what it has."""

    def __init__(self, path: Path | None, meta: dict):
        self.path, self.doc = path, {"meta": meta, "sections": {}}
        self.save()

    def put(self, section: str, value) -> None:
        self.doc["sections"][section] = value
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str))
        os.replace(tmp, self.path)


def synthetic_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random CIFAR-shaped images in [-1, 1]: [n, 3, size, size] float32 (noise at 1/4 resolution,
    upsampled, squashed), so that the loss sees image-like low-frequency content, not white noise."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, max(size // 4, 1), max(size // 4, 1), generator=gen)
    up = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return torch.tanh(1.5 * up)


# -- ceilings --------------------------------------------------------------------------------------------------------
def section_ceilings(cfg: dict, device: torch.device) -> dict:
    n = cfg["matmul"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    tflops = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
    buf = torch.empty(int(cfg["copy_gib"] * 2**30) // 4, device=device, dtype=torch.float32)
    buf.uniform_()
    out = torch.empty_like(buf)
    out.copy_(buf)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        out.copy_(buf)
    sync(device)
    gbs = 2 * buf.numel() * 4 * reps / (time.perf_counter() - start) / 1e9
    del a, b, buf, out
    return {"matmul_tflops": tflops, "matmul_dtype": str(dtype).replace("torch.", ""), "matmul_n": n,
            "copy_gb_s_read_plus_write": gbs}


# -- training --------------------------------------------------------------------------------------------------------
def build_training(cfg: dict, network: str, sde_name: str, device: torch.device, channels_last: bool):
    from cldsgm.models.registry import build_network
    from cldsgm.sde import build_sde

    torch.manual_seed(0)
    net = build_network(network, **cfg["overrides"]).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, build_sde(sde_name)


def loss_fn(sde, net, x0, t=None, eps=None):
    """The CIFAR-10 configs' loss: HSM, reweightedv2, mixed score, sum over pixels; mean over the batch."""
    from cldsgm.losses import score_matching_loss

    return score_matching_loss(sde, net, x0, objective="hsm", weighting="reweightedv2", mixed_score=True,
                               reduction="sum", t=t, eps=eps).mean()


def step_flops(net, sde, x0) -> float:
    """FLOPs of one training step's forward and backward, counted on the real shapes (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(sde, net, x0).backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bare_rate(cfg: dict, net, sde, x0: torch.Tensor, precision: str, *, fused: bool, sync_every_step: bool,
              device: torch.device, steps: int | None = None) -> float:
    """img/s of complete steps (loss, backward, clip 1, Adam) on one batch, after warm-up steps."""
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, **({"fused": True} if fused else {}))
    steps = steps or cfg["steps"]
    for i in range(cfg["warmup"] + steps):
        if i == cfg["warmup"]:
            sync(device)
            start = time.perf_counter()
        with autocast(device, precision):
            loss = loss_fn(sde, net, x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        if sync_every_step:
            float(loss.detach())  # what a per-step loss read or finiteness check costs: a host-device sync
    sync(device)
    return steps * len(x0) / (time.perf_counter() - start)


TRAIN_EAGER = [  # name, network key, precision, channels_last, fused Adam: in this process, eagerly
    ("bf16+cl+fused (config)", "network", "bf16", True, True),
    ("fp32 eager", "network", "fp32", False, False),
    ("psld fp32+cl+fused (config)", "psld_network", "fp32", True, True),
]
# in the child process: every repeated block compiled, GroupNorm in bf16, fused Adam; "best" = the faster layout
TRAIN_FAST = [("bf16 blocks+gn NCHW", False, None), ("bf16 blocks+gn NHWC", True, None)]


def eager_train_row(cfg: dict, device: torch.device, peak: float | None, variant: tuple, x0, flops: dict) -> dict:
    name, key, precision, channels_last, fused = variant
    net, sde = build_training(cfg, cfg[key], "psld" if key == "psld_network" else "cld", device, channels_last)
    if key not in flops:
        flops[key] = step_flops(net, sde, x0) / len(x0)
    reset_peak(device)
    rate = bare_rate(cfg, net, sde, x0, precision, fused=fused, sync_every_step=False, device=device)
    return rate_row(name, cfg[key], rate, len(x0), flops[key], peak, device)


def rate_row(name: str, network: str, rate: float, batch: int, flops: float, peak: float | None,
             device: torch.device, **extra) -> dict:
    row = {"variant": name, "network": network, "batch": batch, "img_s": rate, "step_ms": 1e3 * batch / rate,
           "gflop_per_img_step": flops / 1e9, "peak_gib": peak_gib(device), **extra}
    if peak:
        row["mfu"] = rate * flops / peak
    return row


def output_errors(fast, eager, sde, x0, device: torch.device) -> dict:
    """The network output on a fixed batch: the fast path (bf16, GroupNorm in bf16, compiled) and the eager bf16
    autocast path, each against eager float32 at the same weights (relative RMS error)."""
    gen = torch.Generator().manual_seed(5)
    u = torch.randn((len(x0), 6, *x0.shape[2:]), generator=gen).to(device)
    t = (0.01 + 0.98 * torch.rand(len(x0), generator=gen)).to(device)
    with torch.no_grad():
        exact = eager(u, t).float()
        with autocast(device, "bf16"):
            out_fast, out_eager = fast(u, t).float(), eager(u, t).float()

    return {"rel_err_fast_vs_fp32": rel_rms(out_fast, exact), "rel_err_eager_bf16_vs_fp32": rel_rms(out_eager, exact)}


def train_fast_child(cfg: dict, device: torch.device, peak: float | None, out_path: Path) -> None:
    """The compiled variants, one row at a time, each written to out_path as soon as it exists."""
    rows, flops = [], None
    x0 = synthetic_images(cfg["batch"], cfg["image"], seed=1).to(device)
    variants = [*TRAIN_FAST, *((f"bf16 blocks+gn best layout, batch {b}", "best", b) for b in cfg["large_batches"])]
    for name, channels_last, batch in variants:
        if channels_last == "best":
            best = max((r for r in rows if "img_s" in r), key=lambda r: r["img_s"], default=None)
            channels_last = bool(best and best["channels_last"])
        net, sde = build_training(cfg, cfg["network"], "cld", device, channels_last)
        if flops is None:
            flops = step_flops(net, sde, x0) / len(x0)
        eager = copy.deepcopy(net)
        make_fast(net, cfg)
        xb = synthetic_images(batch, cfg["image"], seed=1).to(device) if batch else x0
        reset_peak(device)
        start = time.perf_counter()
        with autocast(device, "bf16"):
            loss_fn(sde, net, xb).backward()  # the first step compiles (or loads the graphs compiled before)
        sync(device)
        compile_s = time.perf_counter() - start
        net.zero_grad(set_to_none=True)
        errors = output_errors(net, eager, sde, x0, device) if batch is None else {}
        del eager
        rate = bare_rate(cfg, net, sde, xb, "bf16", fused=device.type == "cuda", sync_every_step=False, device=device)
        rows.append(rate_row(name, cfg["network"], rate, len(xb), flops, peak, device, compile_s=compile_s,
                             channels_last=channels_last, backend=cfg["compile_backend"], **errors))
        out_path.write_text(json.dumps(rows))
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_child(args, kind: str, deadline: float) -> tuple[list, str | None]:
    """(rows, why it stopped early or None) of a child process running one kind of fast variant, cut off at the
    deadline: compilation is bounded by the wall clock, and a cut-off keeps the rows it finished."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-child-") as tmp:
        path = Path(tmp) / "rows.json"
        cmd = [sys.executable, __file__, "--child", kind, "--child-out", str(path)]
        cmd += ["--cpu-smoke"] if args.cpu_smoke else []
        left = deadline - time.monotonic()
        stopped = None
        if left < 10:
            return [], f"only {max(left, 0):.0f} s left"
        try:
            proc = subprocess.run(cmd, timeout=left, capture_output=True, text=True)
            if proc.returncode != 0:
                stopped = (proc.stderr or proc.stdout)[-1500:]
        except subprocess.TimeoutExpired:
            stopped = f"cut off at the section's deadline ({left:.0f} s)"
        rows = json.loads(path.read_text()) if path.exists() else []
    return rows, stopped


def section_train(args, cfg: dict, device: torch.device, peak: float | None, deadline: float) -> dict:
    x0 = synthetic_images(cfg["batch"], cfg["image"], seed=1).to(device)
    flops, rows = {}, []
    rows.append(eager_train_row(cfg, device, peak, TRAIN_EAGER[0], x0, flops))  # the baseline of every ratio
    fast, stopped = run_child(args, "train", deadline - 0.25 * (deadline - time.monotonic()))
    rows += fast
    for variant in TRAIN_EAGER[1:]:
        if time.monotonic() > deadline:
            rows.append({"variant": variant[0], "skipped": "out of time"})
            continue
        rows.append(eager_train_row(cfg, device, peak, variant, x0, flops))
    base = rows[0]["img_s"]
    for r in rows:
        if "img_s" in r:
            r["x_config"] = r["img_s"] / base
    out = {"batch": cfg["batch"], "rows": rows}
    if stopped:
        out["fast_stopped"] = stopped
    if time.monotonic() < deadline:
        try:
            out["trainer"] = trainer_vs_bare(cfg, device, rows)
        except Exception as err:  # keep the rows measured above
            out["trainer"] = {"error": f"{type(err).__name__}: {err}"}
    return out


def fastest_train(train: dict) -> dict | None:
    """The fastest compiled row at the base batch (what the profile and the safety run use), or None."""
    rows = [r for r in train.get("rows", []) if "compile_s" in r and r["batch"] == train.get("batch")]
    return max(rows, key=lambda r: r["img_s"], default=None)


def _trainer_config(data_path: Path, steps: int, cfg: dict, device: torch.device) -> dict:
    import yaml

    from cldsgm.config import resolve_config

    raw = yaml.safe_load((ROOT / "params/train/cifar10_cld.yaml").read_text())
    raw["data"]["path"] = str(data_path)
    raw["model"]["options"] = dict(cfg["overrides"])
    raw["train"].update({"steps": steps, "batch_size": cfg["batch"], "checkpoint_every": 10**9,
                         "log_every": 10**9, "device": device.type})
    raw["tracking"] = {"enabled": False}
    return resolve_config(raw)


def trainer_vs_bare(cfg: dict, device: torch.device, rows: list) -> dict:
    """`cldsgm.training.train` (the CIFAR-10 CLD config: bf16, channels-last, fused Adam, EMA, seeded CPU batches)
    per-step rate from two runs of different length (start-up cancels), checkpoint writes stubbed out (a 1.7 GB
    write is disk speed, not ours); against the bare loop of the same variant measured above."""
    import cldsgm.training.trainer as trainer_module
    from cldsgm.data.prepared import prepared_paths, save_prepared

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        images = ((synthetic_images(cfg["pool"], cfg["image"], seed=2) + 1) * 127.5).to(torch.uint8).numpy()
        save_prepared(tmp, "synthetic", "train", images, kind="image", source="gpu_check synthetic")
        data_path = prepared_paths(tmp, "synthetic", "train")[0]
        saved = trainer_module.save_checkpoint, trainer_module._write_history
        trainer_module.save_checkpoint = lambda *a, **k: None
        trainer_module._write_history = lambda *a, **k: None
        try:
            times = {}
            trainer_module.train(_trainer_config(data_path, 2, cfg, device), tmp / "warm", progress=False)
            for steps in cfg["trainer_steps"]:
                sync(device)
                start = time.perf_counter()
                trainer_module.train(_trainer_config(data_path, steps, cfg, device), tmp / f"run{steps}",
                                     progress=False)
                sync(device)
                times[steps] = time.perf_counter() - start
        finally:
            trainer_module.save_checkpoint, trainer_module._write_history = saved
    short, long = cfg["trainer_steps"]
    rate = (long - short) * cfg["batch"] / (times[long] - times[short])
    bare = next(r["img_s"] for r in rows if r["variant"] == "bf16+cl+fused (config)")
    return {"img_s": rate, "bare_img_s": bare, "trainer_over_bare": rate / bare, "steps": [short, long]}


# -- sampling --------------------------------------------------------------------------------------------------------
class TimedNet(torch.nn.Module):
    """Adds up the wall time of the network's calls (synchronised), so wall - network = the sampler's own time."""

    def __init__(self, net, device):
        super().__init__()
        self.net, self.device, self.seconds = net, device, 0.0

    def forward(self, u, t):
        sync(self.device)
        start = time.perf_counter()
        out = self.net(u, t)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


SAMPLE_FAST = [("bf16 cast+graph", ("cast-weights", "cuda-graph")),
               ("bf16 cast+blocks+graph", ("cast-weights", "compile-blocks", "cuda-graph"))]


def sampling_network(cfg: dict, device: torch.device, speedups=(), precision: str = "bf16", timed: bool = False):
    """(sde, score function, the timed network or None, the fixed-row network) as `cldsgm sample` builds them from a
    checkpoint: the network with its speedups inside fixed-row blocks, read as CLD's mixed HSM score."""
    from cldsgm.models.registry import build_network
    from cldsgm.models.score import ScoreParameterisation
    from cldsgm.sde import build_sde
    from cldsgm.sources import FixedRowsNet, fast_network

    sde = build_sde("cld")
    torch.manual_seed(0)
    net = build_network(cfg["network"], **cfg["overrides"]).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net = fast_network(net, speedups, precision, backend=cfg["compile_backend"])
    timer = TimedNet(net, device) if timed else None
    rows = FixedRowsNet(timer or net, cfg["net_batch"], precision, cast_inputs="cast-weights" in speedups)
    return sde, ScoreParameterisation(sde, objective="hsm", mixed_score=True).score_fn(rows), timer, rows


def sample_once(cfg: dict, device: torch.device, score, sde, batch: int, nfe: int) -> dict:
    from cldsgm.samplers import generate
    from cldsgm.sampling import quantize_images

    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        result = generate(sde, score, batch, (3, cfg["image"], cfg["image"]), sampler="sscs", nfe=nfe,
                          striding="quadratic", device=device)
        images = quantize_images(result.x)
    sync(device)
    assert images.shape == (batch, 3, cfg["image"], cfg["image"]) and images.dtype == np.uint8
    return {"wall_s": time.perf_counter() - start, "nfe": result.nfe}


def output_error(cfg: dict, device: torch.device, net) -> float:
    """Relative RMS difference of the fixed-row network's output from the eager float32 network's on fixed states
    (the output, not the score: the mixed score's analytic part would hide the network's share)."""
    exact_net = sampling_network(cfg, device, precision="fp32")[3]
    gen = torch.Generator().manual_seed(6)
    u = torch.randn((cfg["net_batch"], 6, cfg["image"], cfg["image"]), generator=gen).to(device)
    t = torch.full((cfg["net_batch"],), 0.3, device=device)
    with torch.inference_mode():
        exact, fast = exact_net(u, t), net(u, t)
    return rel_rms(fast, exact)


def sampling_row(cfg: dict, device: torch.device, name: str, speedups=(), precision: str = "bf16") -> dict:
    sde, score, _, _ = sampling_network(cfg, device, speedups, precision)
    start = time.perf_counter()
    sample_once(cfg, device, score, sde, cfg["net_batch"], 3)  # warm-up: compilation, graph capture
    warm_s = time.perf_counter() - start
    sde, score, timer, net = sampling_network(cfg, device, speedups, precision, timed=True)
    sample_once(cfg, device, score, sde, cfg["net_batch"], 3)  # this network's own warm-up (graphs per instance)
    timer.seconds = 0.0
    reset_peak(device)
    timed = sample_once(cfg, device, score, sde, cfg["sample_batch"], cfg["nfe"])
    rate = cfg["sample_batch"] / timed["wall_s"]  # the syncs around each network call cost microseconds
    return {"variant": name, "speedups": list(speedups), "batch": cfg["sample_batch"], "net_batch": cfg["net_batch"],
            "nfe": timed["nfe"], "img_s": rate, "minutes_50k": 50_000 / rate / 60, "nfe_s": rate * timed["nfe"],
            "sampler_share": (timed["wall_s"] - timer.seconds) / timed["wall_s"], "warmup_s": warm_s,
            "output_rel_err_vs_fp32": output_error(cfg, device, net), "peak_gib": peak_gib(device)}


def sampling_fast_child(cfg: dict, device: torch.device, out_path: Path) -> None:
    rows = []
    for name, speedups in SAMPLE_FAST:
        rows.append(sampling_row(cfg, device, name, speedups))
        out_path.write_text(json.dumps(rows))
        if device.type == "cuda":
            torch.cuda.empty_cache()


def section_sampling(args, cfg: dict, device: torch.device, deadline: float) -> dict:
    rows = [sampling_row(cfg, device, "bf16 autocast (config)")]
    fast, stopped = run_child(args, "sampling", deadline)
    rows += fast
    for r in rows:
        r["x_config"] = r["img_s"] / rows[0]["img_s"]
    out = {"sampler": "sscs", "striding": "quadratic", "rows": rows}
    if stopped:
        out["fast_stopped"] = stopped
    return out


# -- Inception -------------------------------------------------------------------------------------------------------
class _InceptionLayers(torch.nn.Module):
    """torchvision's Inception-v3 trunk up to the 2048-d pool: the FID network's architecture (random weights)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import inception_v3

        base = inception_v3(weights=None, aux_logits=False, init_weights=False)
        names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                 "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"]
        self.trunk = torch.nn.Sequential(*[getattr(base, n) for n in names])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)  # [B, 2048, 1, 1] like NVIDIA's pool3


class _InceptionStandIn(torch.nn.Module):
    """The call interface of NVIDIA's TorchScript file as clean-fid uses it (legacy_tensorflow: resize inside)."""

    def __init__(self):
        super().__init__()
        self.layers = _InceptionLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128.0) / 128.0)


def section_inception(cfg: dict, device: torch.device) -> dict:
    torch.manual_seed(0)
    n, batch = cfg["inception_n"], cfg["inception_batch"]
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    out = {"n": n, "batch": batch, "weights": "random (architecture stand-in)"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-inception-") as tmp:
        path = Path(tmp) / "standin-inception.pt"
        torch.jit.script(_InceptionStandIn().eval()).save(str(path))
        module = torch.jit.load(str(path)).to(device).eval()
        x = torch.from_numpy(images[:batch]).to(device).float()
        with torch.inference_mode():
            module(x)
            sync(device)
            reps, start = max(1, n // batch), time.perf_counter()
            for _ in range(reps):
                module(x)
            sync(device)
        out["network_img_s"] = reps * batch / (time.perf_counter() - start)
        try:
            from cldsgm.eval.fid import inception_features, load_inception

            model, _ = load_inception(path, "legacy_tensorflow", device=device)
            inception_features(images[:batch], model, "legacy_tensorflow", batch_size=batch, device=device)
            sync(device)
            start = time.perf_counter()
            feats = inception_features(images, model, "legacy_tensorflow", batch_size=batch, device=device)
            sync(device)
            rate = n / (time.perf_counter() - start)
            assert feats.shape == (n, 2048) and np.isfinite(feats).all()
            out.update({"pipeline_img_s": rate, "minutes_50k": 50_000 / rate / 60})
        except ImportError as err:  # clean-fid is not installed where this runs: the bare network's figure only
            out["pipeline_error"] = f"{type(err).__name__}: {err}"
    return out


# -- profile ---------------------------------------------------------------------------------------------------------
def _top_kernels(prof, device: torch.device, wall_s: float, k: int = 12) -> dict:
    events = [e for e in prof.key_averages() if e.device_type is not None]
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(((e.key, getattr(e, attr, 0.0), e.count) for e in events), key=lambda r: -r[1])
    total = sum(r[1] for r in rows) or 1.0
    rows = [r for r in rows if r[1] > 0]
    gemm = sum(r[1] for r in rows if any(s in r[0].lower() for s in ("gemm", "conv", "sm90", "cutlass", "xmma",
                                                                      "mm", "wgrad", "dgrad", "fprop")))
    out = {"total_ms": total / 1e3, "wall_ms": 1e3 * wall_s, "matrix_share": gemm / total,
           "top": [{"kernel": name[:240], "ms": t / 1e3, "share": t / total, "calls": c} for name, t, c in rows[:k]]}
    if device.type == "cuda":  # kernels of one stream do not overlap: the rest of the wall time has none running
        out["idle_share"] = max(0.0, 1 - total / 1e3 / out["wall_ms"])
        out["kernels"] = sum(r[2] for r in rows)
    return out


def make_fast(net, cfg: dict):
    """The training fast path in place: GroupNorm in bf16, every repeated block compiled."""
    from cldsgm.models.fast import compile_blocks, set_norm_dtype

    set_norm_dtype(net, "compute")
    return compile_blocks(net, backend=cfg["compile_backend"])


def fast_training(cfg: dict, device: torch.device, best: dict | None):
    """(net, sde) of the fastest measured training configuration (the config's eager one without a measurement)."""
    net, sde = build_training(cfg, cfg["network"], "cld", device, channels_last=best["channels_last"] if best else True)
    if best:
        make_fast(net, cfg)
    return net, sde


def section_profile(cfg: dict, device: torch.device, best_train: dict | None, best_sampling: dict | None) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    net, sde = fast_training(cfg, device, best_train)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, fused=device.type == "cuda")
    x0 = synthetic_images(cfg["batch"], cfg["image"], seed=1).to(device)

    def train_step():
        with autocast(device, "bf16"):
            loss = loss_fn(sde, net, x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()

    for _ in range(2):
        train_step()
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(cfg["profile_steps"]):
            train_step()
        sync(device)
    out = {"train_config": best_train["variant"] if best_train else "bf16+cl+fused (config)",
           "train_steps": cfg["profile_steps"], "train": _top_kernels(prof, device, time.perf_counter() - start)}
    optimizer.state.clear()  # free the Adam moments before the sampling profile
    speedups = tuple(best_sampling["speedups"]) if best_sampling else ()
    sde, score, _, _ = sampling_network(cfg, device, speedups)
    sample_once(cfg, device, score, sde, cfg["net_batch"], 3)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        sample_once(cfg, device, score, sde, cfg["net_batch"], 3)
    out["sampling_config"] = best_sampling["variant"] if best_sampling else "bf16 autocast (config)"
    out["sscs_3nfe"] = _top_kernels(prof, device, time.perf_counter() - start)
    return out


# -- bf16 safety -----------------------------------------------------------------------------------------------------
def section_safety(cfg: dict, device: torch.device, deadline: float, best: dict | None) -> dict:
    """bf16 in the fastest measured configuration for safety_steps steps and fp32 eagerly for fp32_steps steps, from
    the same weights on the same batches, until the deadline (the fp32 run gets the last third of the time)."""
    pool = synthetic_images(cfg["pool"], cfg["image"], seed=3)
    eval_gen = torch.Generator().manual_seed(4)
    eval_idx = torch.randint(len(pool), (cfg["eval_batch"],), generator=eval_gen)
    from cldsgm.losses import sample_time
    from cldsgm.sde import build_sde

    sde = build_sde("cld")
    eval_x0 = pool[eval_idx].to(device)
    eval_t = sample_time(cfg["eval_batch"], 1e-5, generator=eval_gen).to(device)
    eval_eps = torch.randn((cfg["eval_batch"], 6, cfg["image"], cfg["image"]), generator=eval_gen).to(device)

    def batch(step):
        gen = torch.Generator().manual_seed(10_000 + step)
        idx = torch.randint(len(pool), (cfg["batch"],), generator=gen)
        t = sample_time(cfg["batch"], 1e-5, generator=gen)
        eps = torch.randn((cfg["batch"], 6, cfg["image"], cfg["image"]), generator=gen)
        return tuple(x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x
                     for x in (pool[idx], t, eps))

    def eval_losses(net):
        """Per-sample losses of the fixed evaluation batch under bf16 autocast and in fp32, same weights."""
        from cldsgm.losses import score_matching_loss

        out = {}
        with torch.no_grad():
            for precision in ("bf16", "fp32"):
                with autocast(device, precision):
                    per = score_matching_loss(sde, net, eval_x0, objective="hsm", weighting="reweightedv2",
                                              mixed_score=True, reduction="sum", t=eval_t, eps=eval_eps)
                out[precision] = per.float()
        diff = out["bf16"] - out["fp32"]
        return {"fp32_mean": float(out["fp32"].mean()), "bf16_mean": float(out["bf16"].mean()),
                "paired_diff_mean": float(diff.mean()),
                "paired_diff_se": float(diff.std() / math.sqrt(len(diff))),
                "loss_se": float(out["fp32"].std() / math.sqrt(len(diff)))}

    def run(precision, steps, checks, until):
        if precision == "bf16":
            net, _ = fast_training(cfg, device, best)
        else:
            net, _ = build_training(cfg, cfg["network"], "cld", device, channels_last=True)
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, fused=device.type == "cuda")
        losses, grad_norms, evals = [], [], {}
        start = time.perf_counter()
        done = 0
        for step in range(steps):
            if time.monotonic() > until:
                break
            for group in optimizer.param_groups:
                group["lr"] = 2e-4 * min(step / 200, 1.0)
            if step in checks:
                net.eval()
                evals[step] = eval_losses(net)
                net.train()
            x0, t, eps = batch(step)
            with autocast(device, precision):
                loss = loss_fn(sde, net, x0, t=t, eps=eps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norms.append(torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0).detach())
            optimizer.step()
            losses.append(loss.detach().float())
            done += 1
        sync(device)
        seconds = time.perf_counter() - start
        if done and steps in checks:
            net.eval()
            evals[done] = eval_losses(net)
        losses = torch.stack(losses).cpu().numpy() if losses else np.zeros(0)
        grad_norms = torch.stack(grad_norms).float().cpu().numpy() if grad_norms else np.zeros(0)
        return {"steps": done, "seconds": seconds, "losses": losses, "grad_norms": grad_norms, "evals": evals}

    checks = set(range(0, cfg["safety_steps"] + 1, max(cfg["safety_steps"] // 4, 1)))
    now = time.monotonic()
    bf16 = run("bf16", cfg["safety_steps"], checks, now + 2 / 3 * (deadline - now))
    fp32 = run("fp32", cfg["fp32_steps"], set(), deadline)
    k = min(len(fp32["losses"]), len(bf16["losses"]))
    window = max(k // 3, 1)
    a, b = bf16["losses"][k - window:k], fp32["losses"][k - window:k]
    diff = a - b  # paired: the same weights at step 0, the same batch, t and eps at every step
    noise_se = float(b.std(ddof=1) / math.sqrt(len(b))) if len(b) > 1 else float("nan")  # the fp32 mean's own noise
    return {
        "bf16_config": best["variant"] if best else "bf16+cl+fused (config)",
        "bf16_steps": bf16["steps"], "bf16_seconds": bf16["seconds"], "lr": 2e-4, "warmup_steps": 200,
        "all_finite": bool(np.isfinite(bf16["losses"]).all() and np.isfinite(bf16["grad_norms"]).all()),
        "loss_first_last": [float(bf16["losses"][:window].mean()), float(bf16["losses"][-window:].mean())]
        if len(bf16["losses"]) else None,
        "grad_norm_max": float(bf16["grad_norms"].max()) if len(bf16["grad_norms"]) else None,
        "fp32_steps": fp32["steps"], "compare_window": [k - window, k],
        "bf16_window_mean": float(a.mean()) if len(a) else None,
        "fp32_window_mean": float(b.mean()) if len(b) else None,
        "diff_mean": float(diff.mean()) if len(diff) else None, "fp32_window_se": noise_se,
        "within_noise": bool(len(diff) > 1 and abs(diff.mean()) <= 2 * noise_se),
        "eval_along_bf16_run": {str(s): v for s, v in sorted(bf16["evals"].items())},
        "loss_trace_every_10": [float(v) for v in bf16["losses"][::10]],
    }


# -- GPU-hours of the CIFAR-10 studies -------------------------------------------------------------------------------
# Adaptive ODE solves (RK45) spend a number of evaluations a study cannot know in advance: catalog.SDES holds the
# CLD paper's 312 and assumes the same order for VPSDE and PSLD.


def section_hours(train: dict, sampling: dict, inception: dict) -> dict:
    """GPU-hours of each params/cifar10_*.yaml study at the fastest measured rates, its jobs from
    cldsgm.study.job_table (training replicas, sample sets with their NFE and sizes)."""
    import yaml

    from cldsgm import catalog
    from cldsgm.study import job_table, load_study, training_config

    rows = {r["variant"]: r for r in train.get("rows", []) if "img_s" in r}
    best = fastest_train(train)
    trainer = train.get("trainer", {})
    overhead = min(trainer.get("trainer_over_bare") or 1.0, 1.0)  # the trainer's overhead as measured for CLD
    cld_rate = (best or rows.get("bf16+cl+fused (config)") or {}).get("img_s")
    cld_rate = cld_rate * overhead if cld_rate else None
    psld_rate = rows.get("psld fp32+cl+fused (config)", {}).get("img_s")
    psld_rate = psld_rate * overhead if psld_rate else None
    fastest_sampling = max(sampling.get("rows", []), key=lambda r: r.get("nfe_s", 0), default={})
    nfe_s = fastest_sampling.get("nfe_s")
    fid_rate = inception.get("pipeline_img_s") or inception.get("network_img_s")
    studies = {}
    for path in sorted((ROOT / "params").glob("cifar10_*.yaml")):
        study = load_study(yaml.safe_load(path.read_text()), str(path), check_files=False)
        table = job_table(study)
        hours = {"train": 0.0, "sample": 0.0, "fid": 0.0}
        for name, replica in table["replicas"].items():
            if name in table["imported"]:
                continue
            model = study["models"][replica["model"]]
            cfg = training_config(replica["model"], model, str(path))
            img_s = psld_rate if cfg["sde"]["name"] == "psld" else cld_rate
            if img_s:
                hours["train"] += cfg["train"]["steps"] * cfg["train"]["batch_size"] / img_s / 3600
        images = 0
        for row in table["rows"]:
            nfe = row["nfe"] or catalog.SDES[row["sde"]].cifar10_ode_nfe
            images += row["num_samples"]
            if nfe_s:
                hours["sample"] += row["num_samples"] * nfe / nfe_s / 3600
        if fid_rate:
            hours["fid"] = (images + 50_000) / fid_rate / 3600  # every set, plus the reference statistics
        studies[path.stem] = {**{k: round(v, 1) for k, v in hours.items()}, "rows": len(table["rows"]),
                              "total": round(sum(hours.values()), 1)}
    return {"ode_nfe_assumed": {name: spec.cifar10_ode_nfe for name, spec in catalog.SDES.items()},
            "train_rate": best["variant"] if best else "bf16+cl+fused (config)",
            "sampling_rate": fastest_sampling.get("variant"), "note": "one GPU of this kind; NLL not included",
            "studies": studies}


# -- the table -------------------------------------------------------------------------------------------------------
def _print_train(t: dict) -> None:
    print(f"{'training variant':<40} {'batch':>5} {'img/s':>8} {'ms/step':>8} {'x config':>8} {'MFU':>6} "
          f"{'GiB':>5} {'compile s':>9}")
    for r in t["rows"]:
        if "img_s" not in r:
            print(f"{r['variant']:<40} {r.get('skipped', '')}")
            continue
        mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "     -"
        mem = f"{r['peak_gib']:5.1f}" if r.get("peak_gib") is not None else "    -"
        comp = f"{r['compile_s']:9.1f}" if "compile_s" in r else "        -"
        print(f"{r['variant']:<40} {r['batch']:5d} {r['img_s']:8.1f} {r['step_ms']:8.1f} {r.get('x_config', 0):8.2f} "
              f"{mfu} {mem} {comp}")
        if "rel_err_fast_vs_fp32" in r:
            print(f"{'':<6}output vs fp32 on a fixed batch: this path {r['rel_err_fast_vs_fp32']:.2e}, eager bf16 "
                  f"{r['rel_err_eager_bf16_vs_fp32']:.2e} (relative RMS)")
    if t.get("fast_stopped"):
        print(f"compiled variants stopped: {t['fast_stopped'][-300:]}")
    if "img_s" in t.get("trainer", {}):
        print(f"{'cldsgm train (config), per step':<40} {t['trainer']['img_s']:14.1f}   trainer / bare "
              f"{t['trainer']['trainer_over_bare']:.2f}")


def print_table(doc: dict) -> None:
    meta, s = doc["meta"], doc["sections"]
    print(f"\n# {meta['device']} | driver {meta.get('driver')} | torch {meta['torch']} | CUDA {meta.get('cuda')} | "
          f"cuDNN {meta.get('cudnn')} | {meta['mode']} | {meta.get('wall_s', 0):.0f} s")
    if "train" in s and "rows" in s["train"]:
        _print_train(s["train"])
    if "sampling" in s and "rows" in s["sampling"]:
        for r in s["sampling"]["rows"]:
            print(f"SSCS NFE {r['nfe']} {r['variant']} (batch {r['batch']}/{r['net_batch']}): {r['img_s']:.1f} img/s "
                  f"(x{r['x_config']:.2f}), 50k in {r['minutes_50k']:.1f} min, sampler share "
                  f"{100 * r['sampler_share']:.1f} %, warm-up {r['warmup_s']:.0f} s, output vs fp32 "
                  f"{r['output_rel_err_vs_fp32']:.1e}")
        if s["sampling"].get("fast_stopped"):
            print(f"fast sampling stopped: {s['sampling']['fast_stopped'][-300:]}")
    if "profile" in s and "train" in s["profile"]:
        for key, config in (("train", "train_config"), ("sscs_3nfe", "sampling_config")):
            p = s["profile"][key]
            idle = f", idle {100 * p['idle_share']:.0f} % of {p['wall_ms']:.0f} ms" if "idle_share" in p else ""
            print(f"top kernels, {key} of {s['profile'][config]} ({p['total_ms']:.1f} ms, matrix share "
                  f"{100 * p['matrix_share']:.0f} %{idle}):")
            for r in p["top"][:6]:
                print(f"   {100 * r['share']:5.1f} % {r['ms']:8.2f} ms x{r['calls']:<5} {r['kernel'][:70]}")
    if "inception" in s and "network_img_s" in s["inception"]:
        i = s["inception"]
        pipe = (f"; through cldsgm.eval.fid {i['pipeline_img_s']:.0f} img/s, 50k in {i['minutes_50k']:.1f} min"
                if "pipeline_img_s" in i else f"; pipeline: {i.get('pipeline_error')}")
        print(f"Inception-v3 features: network {i['network_img_s']:.0f} img/s{pipe}")
    if "ceilings" in s and "matmul_tflops" in s["ceilings"]:
        c = s["ceilings"]
        print(f"ceilings: {c['matmul_dtype']} matmul {c['matmul_tflops']:.0f} TFLOP/s, copy "
              f"{c['copy_gb_s_read_plus_write']:.0f} GB/s")
    if "safety" in s and s["safety"].get("diff_mean") is not None:
        f = s["safety"]
        print(f"bf16 safety ({f['bf16_config']}): {f['bf16_steps']} steps in {f['bf16_seconds']:.0f} s, all finite "
              f"{f['all_finite']}, loss {f['loss_first_last']}, max grad norm {f['grad_norm_max']:.3g}; steps "
              f"{f['compare_window']} mean loss bf16 - fp32 = {f['diff_mean']:.4g} (fp32 mean's se "
              f"{f['fp32_window_se']:.2g}), within 2 se: {f['within_noise']}")
        for step, e in f.get("eval_along_bf16_run", {}).items():
            print(f"   fixed batch at step {step}: fp32 {e['fp32_mean']:.5g}, bf16 - fp32 {e['paired_diff_mean']:.3g} "
                  f"+- {e['paired_diff_se']:.2g} (paired se; the loss's own se {e['loss_se']:.2g})")
    if "hours" in s and "studies" in s["hours"]:
        h = s["hours"]
        for name, row in h["studies"].items():
            print(f"GPU-hours {name} ({h['train_rate']}; {h['sampling_rate']}): train {row['train']}, sample "
                  f"{row['sample']} ({row['rows']} sets), FID {row['fid']}, total {row['total']}")
    for name, value in s.items():
        if isinstance(value, dict) and "error" in value:
            print(f"{name}: ERROR {value['error'][-300:]}")


def default_out(device_name: str) -> Path:
    card = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    return ROOT / "benchmarks" / "results" / f"gpu_check_{card}_{datetime.date.today().isoformat()}.json"


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], timeout=20,
                             capture_output=True, text=True)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# section -> the share of the budget by which it should have finished (the rest is left to those after it)
PLAN = [("train", 0.40), ("sampling", 0.62), ("profile", 0.68), ("inception", 0.72), ("ceilings", 0.73),
        ("safety", 0.98), ("hours", 1.0)]


def run_section(section: str, args, cfg: dict, device: torch.device, peak, deadline: float, s: dict):
    if section == "train":
        return section_train(args, cfg, device, peak, deadline)
    if section == "sampling":
        return section_sampling(args, cfg, device, deadline)
    best_sampling = max(s.get("sampling", {}).get("rows", []), key=lambda r: r.get("img_s", 0), default=None)
    if section == "profile":
        return section_profile(cfg, device, fastest_train(s.get("train", {})), best_sampling)
    if section == "inception":
        return section_inception(cfg, device)
    if section == "ceilings":
        return section_ceilings(cfg, device)
    if section == "safety":
        return section_safety(cfg, device, deadline, fastest_train(s.get("train", {})))
    return section_hours(s.get("train", {}), s.get("sampling", {}), s.get("inception", {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file for the table, written as it grows (default: benchmarks/results/"
                             "gpu_check_<card>_<date>.json)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every section at toy sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=470.0, help="wall-clock budget of the whole run")
    parser.add_argument("--sections", default=None, help="comma-separated subset of the sections (default: all)")
    parser.add_argument("--child", choices=["train", "sampling"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = SMOKE if args.cpu_smoke else FULL
    plan = PLAN
    if args.sections:
        wanted = args.sections.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in PLAN})
        if unknown:
            parser.error(f"unknown section(s) {unknown}; choose from {[name for name, _ in PLAN]}")
        kept = [(name, share) for name, share in PLAN if name in wanted]
        plan = [(name, (i + 1) / len(kept)) for i, (name, _) in enumerate(kept)]  # the budget split evenly
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here, nothing measured (run with --cpu-smoke to check the script on a CPU)")
        return 1
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if args.child:
        if args.child == "train":
            train_fast_child(cfg, device, peak, args.child_out)
        else:
            sampling_fast_child(cfg, device, args.child_out)
        return 0
    started = time.monotonic()
    meta = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "driver": driver_version() if device.type == "cuda" else None, "budget_s": args.budget_s,
            "mode": "cpu-smoke" if args.cpu_smoke else "full", "sizes": {k: str(v) for k, v in cfg.items()},
            "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update({"sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30})
    out = args.out or (None if args.cpu_smoke else default_out(name))
    results = Results(out, meta)
    s = results.doc["sections"]
    for section, share in plan:
        deadline = started + share * args.budget_s
        print(f"[{time.monotonic() - started:6.1f} s] {section}", flush=True)
        try:
            value = run_section(section, args, cfg, device, peak, deadline, s)
        except Exception as err:  # one broken section must not lose the others' figures
            import traceback

            value = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        results.put(section, value)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        left = args.budget_s - (time.monotonic() - started)
        print(f"[{time.monotonic() - started:6.1f} s] {section} done; {left:.0f} s of the budget left", flush=True)
    results.doc["meta"]["wall_s"] = time.monotonic() - started
    results.save()
    print_table(results.doc)
    if out:
        print(f"written to {out}")
    errors = [k for k, v in s.items() if isinstance(v, dict) and "error" in v]
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
