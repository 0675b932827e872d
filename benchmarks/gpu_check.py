"""The GPU figures in one run: training img/s and MFU, torch.compile, a bf16 safety run, SSCS sampling, Inception
features, the top kernels, and the GPU-hours of the CIFAR-10 studies. Prints one table; writes it as JSON.

Synthetic CIFAR-shaped data and random weights (speed does not depend on either): no dataset, checkpoint or
Inception file is needed. Sections run from the most to the least important, each inside a time budget, and each
result is written to the JSON as soon as it exists, so a run cut short still returns what it measured.

    python benchmarks/gpu_check.py --out gpu_check.json                # one H100/H200: under 9 minutes
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/smoke.json   # every section at toy sizes on the CPU

Sections (full sizes; --cpu-smoke shrinks every one):
- ceilings: a 8192^3 bf16 matrix product (TFLOP/s) and a 2 GiB device copy (GB/s, read + write) on this card.
- train: complete steps (forward, HSM loss with the mixed score, backward, clip, Adam) of the 107.6M CLD NCSN++ at
  batch 128: fp32 eager, bf16, the configs' bf16 + channels-last + fused Adam, that with a host sync every step (the
  trainer's old pattern), with cudnn.benchmark, and the PSLD network in fp32 as its config; img/s, MFU over the
  dense bf16 peak (FLOPs counted by torch.utils.flop_counter), peak memory. Then `cldsgm.training.train` itself
  (tracking off, checkpoint writes stubbed) against the bare loop: our trainer's overhead.
- sampling: SSCS at NFE 150 (quadratic striding) through the `cldsgm sample` path (fixed-row network blocks,
  per-sample noise, quantisation) in bf16, bf16 with a channels-last network, and fp32: img/s, minutes for 50k, the
  sampler's share of the wall time.
- inception: features of uint8 CIFAR images through `cldsgm.eval.fid.inception_features` (clean-fid's loader,
  legacy_tensorflow mode) with a TorchScript stand-in of the Inception-v3 architecture (torchvision, random
  weights): img/s and minutes for 50k; and the bare network's img/s.
- profile: torch.profiler over bf16 training steps and SSCS steps: the top kernels by device time.
- safety: 2000 bf16 steps at the full learning rate (warm-up shortened to 200 steps, the stress case): every loss
  and gradient norm finite; the loss against an fp32 run from the same weights on the same batches, and bf16 vs
  fp32 on a fixed evaluation batch along the way, each beside its standard error.
- compile: torch.compile (inductor) of the bf16 step, first per block (residual and attention blocks: one
  compilation reused by all), then of the whole network, each in a subprocess cut off when the time left runs out:
  compile seconds, img/s.
At the speed measured on an H200 (README) the 2000 safety steps alone take about 11 minutes: the full run cuts the
safety run short at its deadline (the steps done are reported); `--sections safety --budget-s 600` gives it a call.
- hours: GPU-hours of the params/cifar10_*.yaml studies from the measured rates (training, sampling, FID).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
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
        "image": 32, "steps": 20, "warmup": 5, "trainer_steps": (10, 50), "safety_steps": 2000, "fp32_steps": 300,
        "eval_batch": 512, "pool": 8192, "nfe": 150, "sample_batch": {"bf16": 1000, "fp32": 250},
        "net_batch": {"bf16": 500, "fp32": 250}, "inception_n": 10000, "inception_batch": 500,
        "profile_steps": 3, "matmul": 8192, "copy_gib": 2.0, "compile_backend": "inductor"}
SMOKE = {"network": "ncsnpp_cifar10_cld", "psld_network": "ncsnpp_cifar10_psld",
         "overrides": {"nf": 16, "num_res_blocks": 1}, "batch": 4, "image": 32, "steps": 2, "warmup": 1,
         "trainer_steps": (2, 4), "safety_steps": 12, "fp32_steps": 6, "eval_batch": 8, "pool": 32, "nfe": 4,
         "sample_batch": {"bf16": 4, "fp32": 4}, "net_batch": {"bf16": 2, "fp32": 4}, "inception_n": 4,
         "inception_batch": 2, "profile_steps": 1, "matmul": 256, "copy_gib": 0.01, "compile_backend": "aot_eager"}


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
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


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


TRAIN_VARIANTS = [  # name, network key, precision, channels_last, fused, sync per step, cudnn.benchmark
    ("fp32 eager", "network", "fp32", False, False, False, False),
    ("bf16", "network", "bf16", False, False, False, False),
    ("bf16+cl+fused (config)", "network", "bf16", True, True, False, False),
    ("bf16+cl+fused, sync/step", "network", "bf16", True, True, True, False),
    ("bf16+cl+fused+cudnn.benchmark", "network", "bf16", True, True, False, True),
    ("psld fp32+cl+fused (config)", "psld_network", "fp32", True, True, False, False),
]


def section_train(cfg: dict, device: torch.device, peak: float | None, deadline: float) -> dict:
    x0 = synthetic_images(cfg["batch"], cfg["image"], seed=1).to(device)
    flops = {}
    rows = []
    for name, key, precision, cl, fused, per_step_sync, bench in TRAIN_VARIANTS:
        if time.monotonic() > deadline:
            rows.append({"variant": name, "skipped": "out of time"})
            continue
        sde_name = "psld" if key == "psld_network" else "cld"
        net, sde = build_training(cfg, cfg[key], sde_name, device, cl)
        if key not in flops:
            flops[key] = step_flops(net, sde, x0) / len(x0)
        torch.backends.cudnn.benchmark = bench
        reset_peak(device)
        try:
            rate = bare_rate(cfg, net, sde, x0, precision, fused=fused, sync_every_step=per_step_sync, device=device)
        finally:
            torch.backends.cudnn.benchmark = False
        row = {"variant": name, "network": cfg[key], "img_s": rate, "step_ms": 1e3 * len(x0) / rate,
               "gflop_per_img_step": flops[key] / 1e9, "peak_gib": peak_gib(device)}
        if peak:
            row["mfu"] = rate * flops[key] / peak
        rows.append(row)
        del net
    base = next((r["img_s"] for r in rows if r["variant"] == "fp32 eager" and "img_s" in r), None)
    for r in rows:
        if base and "img_s" in r:
            r["x_fp32_eager"] = r["img_s"] / base
    out = {"batch": cfg["batch"], "rows": rows}
    if time.monotonic() < deadline:
        try:
            out["trainer"] = trainer_vs_bare(cfg, device, rows)
        except Exception as err:  # keep the rows measured above
            out["trainer"] = {"error": f"{type(err).__name__}: {err}"}
    return out


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


def sample_once(cfg: dict, device: torch.device, precision: str, batch: int, nfe: int, timed: bool,
                channels_last: bool = False):
    from cldsgm.models.registry import build_network
    from cldsgm.models.score import ScoreParameterisation
    from cldsgm.samplers import generate
    from cldsgm.sampling import quantize_images
    from cldsgm.sde import build_sde
    from cldsgm.sources import FixedRowsNet

    sde = build_sde("cld")
    torch.manual_seed(0)
    net = build_network(cfg["network"], **cfg["overrides"]).to(device).eval()
    if channels_last:  # NHWC weights: cuDNN's tensor-core kernels without a layout conversion per convolution
        net = net.to(memory_format=torch.channels_last)
    net = TimedNet(net, device) if timed else net
    score = ScoreParameterisation(sde, objective="hsm", mixed_score=True).score_fn(
        FixedRowsNet(net, min(cfg["net_batch"][precision], batch), precision))
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        result = generate(sde, score, batch, (3, cfg["image"], cfg["image"]), sampler="sscs", nfe=nfe,
                          striding="quadratic", device=device)
        images = quantize_images(result.x)
    sync(device)
    wall = time.perf_counter() - start
    assert images.shape == (batch, 3, cfg["image"], cfg["image"]) and images.dtype == np.uint8
    return {"wall_s": wall, "net_s": net.seconds if timed else None, "nfe": result.nfe}


def section_sampling(cfg: dict, device: torch.device, deadline: float) -> dict:
    rows = []
    for variant in ("bf16", "bf16+cl", "fp32"):
        precision, channels_last = variant.split("+")[0], variant.endswith("+cl")
        if time.monotonic() > deadline:
            rows.append({"precision": variant, "skipped": "out of time"})
            continue
        batch = cfg["sample_batch"][precision]
        sample_once(cfg, device, precision, min(batch, cfg["net_batch"][precision]), 3, timed=False,
                    channels_last=channels_last)  # warm-up
        reset_peak(device)
        timed = sample_once(cfg, device, precision, batch, cfg["nfe"], timed=True, channels_last=channels_last)
        rate = batch / timed["wall_s"]  # the syncs around each network call cost microseconds against its ms
        rows.append({"precision": variant, "batch": batch, "net_batch": cfg["net_batch"][precision],
                     "nfe": timed["nfe"], "img_s": rate, "minutes_50k": 50_000 / rate / 60,
                     "nfe_s": rate * timed["nfe"],
                     "sampler_share": (timed["wall_s"] - timed["net_s"]) / timed["wall_s"],
                     "peak_gib": peak_gib(device)})
    return {"sampler": "sscs", "striding": "quadratic", "rows": rows}


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
def _top_kernels(prof, device: torch.device, k: int = 12) -> dict:
    events = [e for e in prof.key_averages() if e.device_type is not None]
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(((e.key, getattr(e, attr, 0.0), e.count) for e in events), key=lambda r: -r[1])
    total = sum(r[1] for r in rows) or 1.0
    rows = [r for r in rows if r[1] > 0]
    gemm = sum(r[1] for r in rows if any(s in r[0].lower() for s in ("gemm", "conv", "sm90", "cutlass", "xmma",
                                                                      "mm", "wgrad", "dgrad", "fprop")))
    return {"total_ms": total / 1e3, "matrix_share": gemm / total,
            "top": [{"kernel": name[:240], "ms": t / 1e3, "share": t / total, "calls": c} for name, t, c in rows[:k]]}


def section_profile(cfg: dict, device: torch.device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    net, sde = build_training(cfg, cfg["network"], "cld", device, channels_last=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, fused=device.type == "cuda")
    x0 = synthetic_images(cfg["batch"], cfg["image"], seed=1).to(device)

    def train_step():
        with autocast(device, "bf16"):
            loss = loss_fn(sde, net, x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()

    train_step()
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(cfg["profile_steps"]):
            train_step()
        sync(device)
    out = {"train_bf16_steps": cfg["profile_steps"], "train": _top_kernels(prof, device)}
    optimizer.state.clear()  # free the Adam moments before the sampling profile
    with profile(activities=activities) as prof:
        sample_once(cfg, device, "bf16", cfg["net_batch"]["bf16"], 3, timed=False)
    out["sscs_bf16_3nfe"] = _top_kernels(prof, device)
    return out


# -- bf16 safety -----------------------------------------------------------------------------------------------------
def section_safety(cfg: dict, device: torch.device, deadline: float) -> dict:
    """bf16 for safety_steps steps and fp32 for fp32_steps steps, from the same weights on the same batches."""
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

    def run(precision, steps, checks):
        net, _ = build_training(cfg, cfg["network"], "cld", device, channels_last=True)
        net.train()
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, fused=device.type == "cuda")
        losses, grad_norms, evals = [], [], {}
        start = time.perf_counter()
        done = 0
        for step in range(steps):
            if time.monotonic() > deadline:
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
    bf16 = run("bf16", cfg["safety_steps"], checks)
    fp32 = run("fp32", cfg["fp32_steps"], set())
    k = min(len(fp32["losses"]), len(bf16["losses"]))
    window = max(k // 3, 1)
    a, b = bf16["losses"][k - window:k], fp32["losses"][k - window:k]
    diff = a - b  # paired: the same weights at step 0, the same batch, t and eps at every step
    noise_se = float(b.std(ddof=1) / math.sqrt(len(b))) if len(b) > 1 else float("nan")  # the fp32 mean's own noise
    return {
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


# -- torch.compile (subprocess: compilation time is bounded by a timeout) ------------------------------------------
def compile_child(cfg: dict, device: torch.device, out_path: Path, regional: bool) -> None:
    from cldsgm.models.layers import AttnBlock, ResBlockBigGAN

    net, sde = build_training(cfg, cfg["network"], "cld", device, channels_last=True)
    x0 = synthetic_images(cfg["batch"], cfg["image"], seed=1).to(device)
    if regional:  # the blocks share their code: dynamo compiles one graph per block type and reuses it
        for module in net.modules():
            if isinstance(module, ResBlockBigGAN | AttnBlock):
                module.compile(backend=cfg["compile_backend"])
        model = net
    else:
        model = torch.compile(net, backend=cfg["compile_backend"])
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, **({"fused": True} if device.type == "cuda" else {}))
    start = time.perf_counter()
    with autocast(device, "bf16"):
        loss = loss_fn(sde, model, x0)
    loss.backward()
    optimizer.step()
    sync(device)
    compile_s = time.perf_counter() - start
    rate = bare_rate(cfg, model, sde, x0, "bf16", fused=device.type == "cuda", sync_every_step=False, device=device)
    out_path.write_text(json.dumps({"compile_s": compile_s, "img_s": rate, "backend": cfg["compile_backend"],
                                    "scope": "blocks" if regional else "network"}))


def section_compile(args, cfg: dict, timeout: float, rows: list) -> dict:
    """Per-block compilation first (one graph reused by every block: seconds, not minutes), then the whole
    network with what time is left; each in a subprocess, so that a compilation that overruns is cut off."""
    base = next((r["img_s"] for r in rows if r.get("variant") == "bf16+cl+fused (config)" and "img_s" in r), None)
    end, out = time.monotonic() + timeout, {}
    for scope in ("blocks", "network"):
        left = end - time.monotonic()
        if left < 20:
            out[scope] = {"skipped": f"only {max(left, 0):.0f} s left"}
            continue
        with tempfile.TemporaryDirectory(prefix="gpu-check-compile-") as tmp:
            path = Path(tmp) / "compile.json"
            cmd = [sys.executable, __file__, "--compile-child", str(path), "--compile-scope", scope]
            cmd += ["--cpu-smoke"] if args.cpu_smoke else []
            try:
                proc = subprocess.run(cmd, timeout=left, capture_output=True, text=True)
            except subprocess.TimeoutExpired:
                out[scope] = {"skipped": f"compilation and timing took longer than the {left:.0f} s left"}
                continue
            if proc.returncode != 0 or not path.exists():
                out[scope] = {"error": (proc.stderr or proc.stdout)[-1500:]}
                continue
            out[scope] = json.loads(path.read_text())
        if base:
            out[scope]["x_eager_config"] = out[scope]["img_s"] / base
    return out


# -- GPU-hours of the CIFAR-10 studies -------------------------------------------------------------------------------
# Adaptive ODE solves (RK45) spend a number of evaluations the paper reports; a study cannot know it in advance.
ODE_NFE = {"cld": 312, "vpsde": 200, "psld": 250}  # CLD paper Table 2 (312); VPSDE/PSLD: assumed, same order


def section_hours(train: dict, sampling: dict, inception: dict) -> dict:
    import yaml

    def rate(variant):
        return next((r["img_s"] for r in train.get("rows", []) if r.get("variant") == variant and "img_s" in r),
                    None)

    trainer = train.get("trainer", {})
    cld_rate = trainer.get("img_s") or rate("bf16+cl+fused (config)")
    psld_rate = rate("psld fp32+cl+fused (config)")
    if psld_rate and trainer.get("trainer_over_bare"):
        psld_rate *= min(trainer["trainer_over_bare"], 1.0)  # the same trainer overhead as measured for CLD
    nfe_s = {r["precision"]: r["nfe_s"] for r in sampling.get("rows", []) if "nfe_s" in r}
    fid_rate = inception.get("pipeline_img_s") or inception.get("network_img_s")
    studies = {}
    for path in sorted((ROOT / "params").glob("cifar10_*.yaml")):
        study = yaml.safe_load(path.read_text())
        hours = {"train": 0.0, "sample": 0.0, "fid": 0.0}
        for model in study["models"].values():
            if "checkpoint" in model:
                continue
            cfg = yaml.safe_load((ROOT / model["config"]).read_text())
            img_s = psld_rate if cfg["sde"]["name"] == "psld" else cld_rate
            if img_s:
                hours["train"] += cfg["train"]["steps"] * cfg["train"]["batch_size"] / img_s / 3600
        precision = study["sampling"].get("precision", "fp32")
        n = study["sampling"]["num_samples"]["cifar10"]
        rows = 0
        for sde_name, samplers in study["sampling"]["samplers"].items():
            for sampler in samplers:
                budgets = [ODE_NFE[sde_name]] if sampler == "ode" else study["sampling"]["nfe"]
                for nfe in budgets:
                    rows += 1
                    if nfe_s.get(precision):
                        hours["sample"] += n * nfe / nfe_s[precision] / 3600
        if fid_rate:
            hours["fid"] = (rows + 1) * n / fid_rate / 3600  # each row, plus the reference statistics
        studies[path.stem] = {**{k: round(v, 1) for k, v in hours.items()}, "rows": rows,
                              "total": round(sum(hours.values()), 1), "sampling_precision": precision}
    return {"ode_nfe_assumed": ODE_NFE, "note": "one GPU of this kind; NLL not included", "studies": studies}


# -- the table -------------------------------------------------------------------------------------------------------
def print_table(doc: dict) -> None:
    meta, s = doc["meta"], doc["sections"]
    print(f"\n# {meta['device']} | torch {meta['torch']} | CUDA {meta.get('cuda')} | cuDNN {meta.get('cudnn')} | "
          f"{meta['mode']} | {meta.get('wall_s', 0):.0f} s")
    if "ceilings" in s and "error" not in s["ceilings"]:
        c = s["ceilings"]
        print(f"ceilings: {c['matmul_dtype']} matmul {c['matmul_tflops']:.0f} TFLOP/s, copy "
              f"{c['copy_gb_s_read_plus_write']:.0f} GB/s")
    if "train" in s and "rows" in s["train"]:
        print(f"{'training variant (batch ' + str(s['train']['batch']) + ')':<34} {'img/s':>8} {'ms/step':>8} "
              f"{'x fp32':>7} {'MFU':>6} {'peak GiB':>8}")
        for r in s["train"]["rows"]:
            if "img_s" not in r:
                print(f"{r['variant']:<34} {r.get('skipped', '')}")
                continue
            mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "     -"
            mem = f"{r['peak_gib']:8.1f}" if r.get("peak_gib") is not None else "       -"
            print(f"{r['variant']:<34} {r['img_s']:8.1f} {r['step_ms']:8.1f} {r.get('x_fp32_eager', 0):7.2f} {mfu} "
                  f"{mem}")
        if "img_s" in s["train"].get("trainer", {}):
            t = s["train"]["trainer"]
            print(f"{'cldsgm train (config), per step':<34} {t['img_s']:8.1f}   trainer / bare "
                  f"{t['trainer_over_bare']:.2f}")
    for scope, c in s.get("compile", {}).items():
        if "img_s" in c:
            print(f"{'+compile ' + scope + ' (' + c['backend'] + ')':<34} {c['img_s']:8.1f}   "
                  f"x eager config {c.get('x_eager_config', 0):.2f}, compile {c['compile_s']:.0f} s")
        elif isinstance(c, dict):
            print(f"compile {scope}: {c.get('skipped') or c.get('error', '')[-300:]}")
    if "sampling" in s:
        for r in s["sampling"]["rows"]:
            if "img_s" in r:
                print(f"SSCS NFE {r['nfe']} {r['precision']} (batch {r['batch']}/{r['net_batch']}): {r['img_s']:.1f} "
                      f"img/s, 50k in {r['minutes_50k']:.1f} min, sampler share {100 * r['sampler_share']:.1f} %, "
                      f"peak {r['peak_gib'] or 0:.1f} GiB")
            else:
                print(f"SSCS {r['precision']}: {r.get('skipped')}")
    if "inception" in s and "network_img_s" in s["inception"]:
        i = s["inception"]
        pipe = (f"; through cldsgm.eval.fid {i['pipeline_img_s']:.0f} img/s, 50k in {i['minutes_50k']:.1f} min"
                if "pipeline_img_s" in i else f"; pipeline: {i.get('pipeline_error')}")
        print(f"Inception-v3 features: network {i['network_img_s']:.0f} img/s{pipe}")
    if "safety" in s and s["safety"].get("diff_mean") is not None:
        f = s["safety"]
        print(f"bf16 safety: {f['bf16_steps']} steps in {f['bf16_seconds']:.0f} s, all finite {f['all_finite']}, "
              f"loss {f['loss_first_last']}, max grad norm {f['grad_norm_max']:.3g}; steps {f['compare_window']} "
              f"mean loss bf16 - fp32 = {f['diff_mean']:.4g} (fp32 mean's se {f['fp32_window_se']:.2g}), "
              f"within 2 se: {f['within_noise']}")
    if "safety" in s and s["safety"].get("eval_along_bf16_run"):
        for step, e in s["safety"]["eval_along_bf16_run"].items():
            print(f"   fixed batch at step {step}: fp32 {e['fp32_mean']:.5g}, bf16 - fp32 {e['paired_diff_mean']:.3g} "
                  f"+- {e['paired_diff_se']:.2g} (paired se; the loss's own se {e['loss_se']:.2g})")
    if "profile" in s and "train" in s["profile"]:
        for key in ("train", "sscs_bf16_3nfe"):
            p = s["profile"][key]
            print(f"top kernels, {key} ({p['total_ms']:.1f} ms, matrix share {100 * p['matrix_share']:.0f} %):")
            for r in p["top"][:6]:
                print(f"   {100 * r['share']:5.1f} % {r['ms']:8.2f} ms x{r['calls']:<5} {r['kernel'][:70]}")
    if "hours" in s and "studies" in s["hours"]:
        for name, h in s["hours"]["studies"].items():
            print(f"GPU-hours {name}: train {h['train']}, sample {h['sample']} ({h['rows']} rows, "
                  f"{h['sampling_precision']}), FID {h['fid']}, total {h['total']}")
    for name, value in s.items():
        if isinstance(value, dict) and "error" in value:
            print(f"{name}: ERROR {value['error'][-300:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the table (written as it grows)")
    parser.add_argument("--cpu-smoke", action="store_true", help="every section at toy sizes on the CPU")
    parser.add_argument("--budget-s", type=float, default=510.0, help="wall-clock budget of the whole run")
    parser.add_argument("--sections", default=None, help="comma-separated subset of the sections (default: all)")
    parser.add_argument("--compile-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compile-scope", default="network", choices=["network", "blocks"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg = SMOKE if args.cpu_smoke else FULL
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here, nothing measured (run with --cpu-smoke to check the script on a CPU)")
        return 1
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.compile_child:
        compile_child(cfg, device, args.compile_child, regional=args.compile_scope == "blocks")
        return 0
    started = time.monotonic()
    end = started + args.budget_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    meta = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "mode": "cpu-smoke" if args.cpu_smoke else "full", "sizes": {k: str(v) for k, v in cfg.items()},
            "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update({"sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30})
    results = Results(args.out, meta)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    # share of the budget each section may start within (the rest is left to the sections after it)
    plan = [("ceilings", 0.05), ("train", 0.30), ("sampling", 0.45), ("inception", 0.52), ("profile", 0.57),
            ("safety", 0.80), ("compile", 0.97), ("hours", 1.0)]
    s = results.doc["sections"]
    if args.sections:
        wanted = args.sections.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in plan})
        if unknown:
            parser.error(f"unknown section(s) {unknown}; choose from {[name for name, _ in plan]}")
        kept = [(name, share) for name, share in plan if name in wanted]
        plan = [(name, (i + 1) / len(kept)) for i, (name, _) in enumerate(kept)]  # the budget split evenly
    for section, share in plan:
        deadline = started + share * args.budget_s
        print(f"[{time.monotonic() - started:6.1f} s] {section}", flush=True)
        try:
            if section == "ceilings":
                value = section_ceilings(cfg, device)
            elif section == "train":
                value = section_train(cfg, device, peak, deadline)
            elif section == "sampling":
                value = section_sampling(cfg, device, deadline)
            elif section == "inception":
                value = section_inception(cfg, device)
            elif section == "profile":
                value = section_profile(cfg, device)
            elif section == "safety":
                value = section_safety(cfg, device, deadline)
            elif section == "compile":
                value = section_compile(args, cfg, end - time.monotonic() - 15, s.get("train", {}).get("rows", []))
            else:
                value = section_hours(s.get("train", {}), s.get("sampling", {}), s.get("inception", {}))
        except Exception as err:  # one broken section must not lose the others' figures
            import traceback

            value = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        results.put(section, value)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results.doc["meta"]["wall_s"] = time.monotonic() - started
    results.save()
    print_table(results.doc)
    errors = [k for k, v in s.items() if isinstance(v, dict) and "error" in v]
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
