"""Sampling at scale: a score source (a training checkpoint or an exact-score oracle) sampled into shards.

A sample directory holds `shard_<first>-<last>.npz` files (uint8 [N, C, H, W] images, or float32 [N, d]
points), each written atomically, `manifest.json` (the run's identity, and per shard its sha256, NFE, wall
seconds and device) and `grid.png`. Shard j covers the global indices [j S, (j + 1) S) of the set (S the shard
size), cut to the requested slice, so separate `--first/--count` invocations, torchrun ranks (rank r takes the
shards j with j mod W = r) and one single run all write the same files.

Image i of run `seed` is the same bytes whatever the batch size and however the run is split: its noise is a
function of (seed, i) (cldsgm.samplers.noise), and the network is always evaluated on blocks of exactly
`net_batch` samples (the last block padded), because matrix kernels pick their blocking by batch size and a
sample's last bits would otherwise depend on its batch. Oracles need no padding: their score is per sample.
The ODE sampler is the exception: its adaptive steps are shared by the samples integrated together, so its
batch size is part of the run's identity and batches are aligned to global multiples of it.

Quantisation of images follows both reference codebases: x in [-1, 1] -> (x + 1) / 2 -> (255 y).clip(0, 255)
truncated to uint8 (not rounded; rounding shifts FID slightly).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cldsgm import __version__
from cldsgm.oracles import GaussianMixture, diamond
from cldsgm.samplers import STRIDINGS, check_sampler, generate
from cldsgm.samplers.grids import check_t_min
from cldsgm.sde import build_sde
from cldsgm.utils.io import atomic_path, atomic_write_json

__all__ = ["MANIFEST", "ORACLES", "SampleDirError", "ScoreSource", "batch_edges", "check_nfe", "check_slice",
           "checkpoint_source", "file_sha256", "fill_shards", "load_samples", "oracle_source", "quantize_images",
           "sample_to_dir", "slice_complete"]

MANIFEST = "manifest.json"
FORMAT = "cldsgm-samples-v1"


class SampleDirError(ValueError):
    """A sample directory that cannot be used as asked (another run's shards, missing or corrupted shards)."""


# -- score sources ---------------------------------------------------------------------------------------------------
def _swissroll_mixture(components: int = 1000, std: float = 0.01) -> GaussianMixture:
    """A stand-in law for the multimodal swissroll with an exact score: 1000 equal Gaussians N(p_k, 0.01^2 I)
    centred on seeded swissroll points p_k (the swissroll itself has no closed-form density)."""
    from cldsgm.data.sources import toy

    points, _, _ = toy("multimodal_swissroll", "train", n=components, seed=12345)
    means = torch.from_numpy(points.astype(np.float64))
    return GaussianMixture(torch.full((components,), 1.0 / components, dtype=torch.float64), means,
                           torch.full_like(means, std))


ORACLES = {"diamond": diamond, "gaussian": lambda: GaussianMixture.gaussian(2, 0.5), "swissroll": _swissroll_mixture}


class FixedRowsNet(nn.Module):
    """`net` evaluated on blocks of exactly `rows` samples (the last one zero-padded), optionally under autocast.

    Makes a sample's output independent of the batch it comes in (see the module docstring). The output is
    cast back to the input's dtype: autocast touches the network only, never the sampler's arithmetic.
    """

    def __init__(self, net: nn.Module, rows: int, precision: str = "fp32"):
        super().__init__()
        if rows < 1:
            raise ValueError(f"net_batch must be >= 1, got {rows}")
        self.net, self.rows, self.precision = net, int(rows), precision

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        outs = []
        for start in range(0, u.shape[0], self.rows):
            block_u, block_t = u[start:start + self.rows], t[start:start + self.rows]
            k = block_u.shape[0]
            if k < self.rows:
                block_u = torch.cat([block_u, block_u.new_zeros(self.rows - k, *block_u.shape[1:])])
                block_t = torch.cat([block_t, block_t.new_full((self.rows - k,), 0.5)])
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
            with torch.autocast(u.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = self.net(block_u, block_t)
            outs.append(out[:k].to(u.dtype))
        return torch.cat(outs)


@dataclass
class ScoreSource:
    """What samples come from: an SDE, a score function (u, t) -> score, and what the data look like.

    identity: JSON-able description (checkpoint path, sha256, step and weights, or the oracle) that goes into
    every manifest and record. mixture: the oracle's data law (mode coverage, exact NLL), else None.
    """

    sde: object
    sde_name: str
    score_fn: object
    data_shape: tuple
    kind: str
    identity: dict
    network: str | None = None
    mixture: GaussianMixture | None = None
    sde_params: dict = field(default_factory=dict)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_source(path: str | Path, *, raw_weights: bool = False, precision: str = "fp32", device="cpu",
                      net_batch: int = 256) -> ScoreSource:
    """The score model of a training checkpoint (EMA weights unless raw_weights), on `device`, in eval mode.

    path: a checkpoint.pt or the run directory holding it. Raises FileNotFoundError, UnsafeCheckpointError or
    ValueError (not a cldsgm checkpoint, or weights that do not fit the recorded network).
    """
    from cldsgm.models.registry import build_network
    from cldsgm.models.score import ScoreParameterisation, check_network_fits
    from cldsgm.training.checkpoint import load_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = load_checkpoint(path)
    config = state["config"]
    data = state.get("data") or _data_from_manifest(config, path)
    sde = build_sde(config["sde"]["name"], **config["sde"]["params"])
    net = build_network(state["network"]["name"], **state["network"]["options"])
    weights = state["model"] if raw_weights else state["ema"]
    try:
        net.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path}: weights do not fit network {state['network']['name']!r} "
                         f"({str(err).splitlines()[0]})") from None
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    check_network_fits(net, sde, data["shape"], device=device, what=f"checkpoint {path}")
    param = ScoreParameterisation(sde, objective=config["loss"]["objective"], mixed_score=config["loss"]["mixed_score"])
    wrapped = FixedRowsNet(net, net_batch, precision)
    identity = {"checkpoint": str(path.absolute()), "sha256": file_sha256(path), "step": int(state["step"]),
                "weights": "raw" if raw_weights else "ema"}
    return ScoreSource(sde, config["sde"]["name"], param.score_fn(wrapped), tuple(data["shape"]), data["kind"],
                       identity, network=state["network"]["name"], sde_params=dict(config["sde"]["params"]))


def _data_from_manifest(config: dict, path: Path) -> dict:
    """Data kind and shape of checkpoints written before they recorded them: from the training data's manifest."""
    from cldsgm.data.prepared import read_manifest

    manifest_path = Path(config["data"]["path"]).with_suffix(".json")
    if not manifest_path.is_file():
        raise ValueError(f"checkpoint {path} does not record its data shape and its training data manifest "
                         f"{manifest_path} is missing")
    manifest = read_manifest(manifest_path)
    return {"kind": manifest["kind"], "shape": manifest["shape"]}


def oracle_source(name: str, sde_name: str = "cld", sde_params: dict | None = None) -> ScoreSource:
    """The exact score of a 2-D Gaussian-mixture law (diamond, gaussian, swissroll stand-in) under an SDE."""
    if name not in ORACLES:
        raise ValueError(f"unknown oracle {name!r}; choose from {sorted(ORACLES)}")
    sde = build_sde(sde_name, **(sde_params or {}))
    mix = ORACLES[name]()
    return ScoreSource(sde, sde_name, mix.score_fn(sde), (mix.dim,), "points", {"oracle": name},
                       mixture=mix, sde_params=dict(sde_params or {}))


# -- NFE and quantisation ----------------------------------------------------------------------------------------------
def check_nfe(sampler: str, nfe: int | None, *, n_corrector: int = 1, denoise: bool = True) -> None:
    """Refuse an NFE budget the fixed-step sampler cannot spend exactly (the record must say what was spent)."""
    if sampler == "ode":
        if nfe is not None:
            raise ValueError("the ODE sampler is adaptive: give tolerances (--rtol/--atol), not --nfe")
        return
    if nfe is None:
        raise ValueError(f"sampler {sampler!r} needs --nfe")
    per_step = 1 + n_corrector if sampler == "pc" else 1
    steps, left = divmod(nfe - int(denoise), per_step)
    if steps < 1 or left:
        hint = (f"PC with {n_corrector} corrector step(s) spends {per_step} NFE per step"
                + (" + 1 for denoising" if denoise else "") + f": choose nfe = {per_step}k" + ("+1" if denoise else ""))
        raise ValueError(f"nfe={nfe} cannot be honoured by sampler {sampler!r}: "
                         + (hint if sampler == "pc" else f"it needs at least {1 + int(denoise)}"))


def quantize_images(x: Tensor) -> np.ndarray:
    """[-1, 1] float -> uint8 as the references do: ((x + 1) / 2 * 255).clip(0, 255), truncated."""
    y = ((x.detach().to(torch.float32).cpu() + 1.0) / 2.0 * 255.0).clamp(0, 255)
    return y.numpy().astype(np.uint8)  # astype truncates toward zero


# -- the sample directory --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _dir_lock(out_dir: Path):
    """An exclusive lock on out_dir/.manifest.lock: several processes may fill one directory at once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".manifest.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the holder dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SampleDirError(f"{path} is not valid JSON ({err}); delete {out_dir} and sample again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SampleDirError(f"{path} is not a cldsgm sample manifest")
    return manifest


def _shard_name(first: int, last: int) -> str:
    return f"shard_{first:06d}-{last:06d}.npz"


def _shards(first: int, count: int, shard_size: int) -> list[tuple[int, int]]:
    """[(a, b)] half-open global ranges: the grid of multiples of shard_size, cut to [first, first + count)."""
    end, out = first + count, []
    start = first
    while start < end:
        stop = min((start // shard_size + 1) * shard_size, end)
        out.append((start, stop))
        start = stop
    return out


def _identity_diff(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _claim_dir(out_dir: Path, identity: dict, kind: str, shape) -> None:
    """Create the manifest, or check that the directory holds shards of this very run."""
    with _dir_lock(out_dir):
        manifest = _read_manifest(out_dir)
        if manifest is None:
            strays = sorted(p.name for p in out_dir.glob("shard_*.npz"))
            if strays:
                raise SampleDirError(f"{out_dir} holds shards without a manifest ({strays[0]}, ...); "
                                     "use an empty --out directory")
            atomic_write_json(out_dir / MANIFEST, {"format": FORMAT, "identity": identity, "kind": kind,
                                                   "shape": list(shape), "shards": {}})
            return
        diff = _identity_diff(manifest["identity"], identity)
        if diff:
            details = "; ".join(f"{k}: {manifest['identity'].get(k)!r} there, {identity.get(k)!r} asked" for k in diff)
            raise SampleDirError(f"{out_dir} holds shards of another run ({details}); use another --out directory "
                                 "or delete this one")


def _record_shard(out_dir: Path, name: str, entry: dict) -> None:
    with _dir_lock(out_dir):
        manifest = _read_manifest(out_dir)
        manifest["shards"][name] = entry
        manifest["shards"] = dict(sorted(manifest["shards"].items()))
        atomic_write_json(out_dir / MANIFEST, manifest)


def _shard_ok(out_dir: Path, name: str, entry: dict | None) -> bool:
    path = out_dir / name
    if entry is None or not path.is_file():
        return False
    if file_sha256(path) != entry["sha256"]:
        print(f"shard {path} is corrupted (its sha256 differs from {out_dir / MANIFEST}); remaking it",
              file=sys.stderr, flush=True)
        return False
    return True


def _save_shard(path: Path, array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.savez(buffer, samples=array)
    data = buffer.getvalue()  # np.savez of the same array gives the same bytes: shards compare by sha256
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def fill_shards(out_dir: Path, identity: dict, kind: str, shape, make_shard, *, n: int, first: int, count: int,
                shard_size: int, rank: int = 0, world: int = 1, device="cpu", progress: bool = True,
                unit: str = "img") -> dict:
    """The resumable shard loop shared by sampling and NLL: claim the directory for `identity`, then make each
    missing or corrupted shard of [first, first + count) that is this rank's with make_shard(a, b, bar) ->
    (array [b - a, ...], mean NFE), save it atomically and record it. Returns a summary dict."""
    from tqdm import tqdm

    _claim_dir(out_dir, identity, kind, shape)
    manifest = _read_manifest(out_dir)
    mine = [(a, b) for j, (a, b) in enumerate(_shards(first, count, shard_size)) if j % world == rank]
    todo = [(a, b) for a, b in mine
            if not _shard_ok(out_dir, _shard_name(a, b - 1), manifest["shards"].get(_shard_name(a, b - 1)))]
    bar = tqdm(total=sum(b - a for a, b in todo), disable=not progress, desc=kind, unit=unit, smoothing=0.1)
    made = []
    try:
        for a, b in todo:
            name, start = _shard_name(a, b - 1), time.perf_counter()
            array, nfe = make_shard(a, b, bar)
            sha = _save_shard(out_dir / name, array)
            _record_shard(out_dir, name, {"first": a, "last": b - 1, "count": b - a, "sha256": sha, "nfe": nfe,
                                          "wall_s": round(time.perf_counter() - start, 3),
                                          "device": _device_name(device), "rank": rank, "world": world,
                                          "cldsgm_version": __version__})
            made.append(name)
    finally:
        bar.close()
    if kind in ("image", "points"):
        _write_grid(out_dir)
    done = sum(e["count"] for e in _read_manifest(out_dir)["shards"].values())
    return {"made": made, "kept": len(mine) - len(todo), "complete": done == n, "done": done, "n": n,
            "slice_complete": slice_complete(out_dir, first, count), "first": first, "count": count,
            "out_dir": str(out_dir)}


def slice_complete(out_dir: str | Path, first: int, count: int) -> bool:
    """Whether the manifest of out_dir holds shards covering [first, first + count) (by whichever process)."""
    shards = _read_manifest(Path(out_dir))["shards"].values()
    return sum(e["count"] for e in shards if first <= e["first"] and e["last"] < first + count) == count


def check_slice(n: int, first: int, count: int | None, batch_size: int, shard_size: int) -> int:
    """The slice's count (default: to the end); ValueError unless 0 <= first < first + count <= n."""
    count = n - first if count is None else count
    if n < 1 or first < 0 or count < 1 or first + count > n:
        raise ValueError(f"need 0 <= first < first + count <= n, got first={first}, count={count}, n={n}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    return count


def batch_edges(a: int, b: int, batch_size: int, *, aligned: bool) -> list[int]:
    """Batch boundaries in [a, b): every batch_size from a, or (aligned) at global multiples of batch_size."""
    if aligned:
        return sorted({a, b, *range((a // batch_size + 1) * batch_size, b, batch_size)})
    return [*range(a, b, batch_size), b]


def sample_to_dir(source: ScoreSource, out_dir: str | Path, *, sampler: str, nfe: int | None, n: int,
                  striding: str = "uniform", t_min: float = 1e-3, seed: int = 0, first: int = 0,
                  count: int | None = None, batch_size: int = 256, shard_size: int = 1000, options: dict | None = None,
                  denoise: bool = True, rank: int = 0, world: int = 1, device="cpu", precision: str = "fp32",
                  net_batch: int | None = None, progress: bool = True) -> dict:
    """Sample images [first, first + count) of a set of n into out_dir; resume what is there. Returns a summary.

    options: the sampler's own keyword arguments (SSCS variant, PC snr / n_corrector, ODE rtol / atol / method).
    rank, world: this process's share (torchrun): shards j with j mod world == rank.
    Raises ValueError (bad arguments, NFE the sampler cannot honour) or SampleDirError.
    """
    options = dict(options or {})
    count = check_slice(n, first, count, batch_size, shard_size)
    check_sampler(source.sde, sampler)
    check_t_min(t_min)
    if striding not in STRIDINGS:
        raise ValueError(f"striding must be one of {STRIDINGS}, got {striding!r}")
    check_nfe(sampler, nfe, n_corrector=options.get("n_corrector", 1), denoise=denoise)
    identity = {"source": source.identity, "sde": source.sde_name, "sde_params": source.sde_params,
                "network": source.network, "sampler": sampler, "options": options, "nfe_budget": nfe,
                "striding": None if sampler == "ode" else striding, "t_min": t_min, "seed": seed, "n": n,
                "shard_size": shard_size, "denoise": denoise, "precision": precision, "net_batch": net_batch,
                "ode_batch": batch_size if sampler == "ode" else None}

    def make_shard(a: int, b: int, bar):
        parts, nfe_total = [], 0
        # ODE batches start at global multiples of the batch size (its steps are shared by a batch)
        edges = batch_edges(a, b, batch_size, aligned=sampler == "ode")
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            with torch.inference_mode():
                result = generate(source.sde, source.score_fn, hi - lo, source.data_shape, sampler=sampler, nfe=nfe,
                                  t_min=t_min, striding=striding, seed=seed, first_index=lo, denoise=denoise,
                                  device=device, **options)
            parts.append(quantize_images(result.x) if source.kind == "image"
                         else result.x.detach().to(torch.float32).cpu().numpy())
            nfe_total += result.nfe * (hi - lo)
            bar.update(hi - lo)
        return np.concatenate(parts), nfe_total / (b - a)

    return fill_shards(Path(out_dir), identity, source.kind, source.data_shape, make_shard, n=n, first=first,
                       count=count, shard_size=shard_size, rank=rank, world=world, device=device,
                       progress=progress)


def _device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _covering(manifest: dict, stop: int) -> list[str] | None:
    """Shard names that cover [0, stop) in order, or None if some index is missing."""
    names, at = [], 0
    by_first = {e["first"]: (name, e) for name, e in manifest["shards"].items()}
    while at < stop:
        if at not in by_first:
            return None
        name, entry = by_first[at]
        names.append(name)
        at = entry["last"] + 1
    return names


def load_samples(out_dir: str | Path, *, verify: bool = True, limit: int | None = None) -> tuple[np.ndarray, dict]:
    """All n samples of a complete sample directory in index order (or the first `limit`), and its manifest.

    Raises SampleDirError naming what is missing or corrupted.
    """
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise SampleDirError(f"{out_dir} holds no {MANIFEST}: run `cldsgm sample --out {out_dir}` first")
    n = manifest["identity"]["n"]
    stop = n if limit is None else min(n, limit)
    names = _covering(manifest, stop)
    if names is None:
        have = sum(e["count"] for e in manifest["shards"].values())
        raise SampleDirError(f"{out_dir} is incomplete: {have} of {n} samples; run the same `cldsgm sample` "
                             "command again to finish it")
    arrays = []
    for name in names:
        path = out_dir / name
        if not path.is_file() or (verify and file_sha256(path) != manifest["shards"][name]["sha256"]):
            raise SampleDirError(f"shard {path} is missing or corrupted (sha256 differs from the manifest); run "
                                 "the same `cldsgm sample` command again to remake it")
        with np.load(path) as data:
            arrays.append(data["samples"])
    return np.concatenate(arrays)[:stop], manifest


def _write_grid(out_dir: Path) -> None:
    """grid.png: the first 64 images (8 x 8, small images enlarged), or a scatter plot of the points."""
    manifest = _read_manifest(out_dir)
    n = manifest["identity"]["n"]
    want = min(n, 64 if manifest["kind"] == "image" else 5000)
    if _covering(manifest, want) is None:
        return
    samples, _ = load_samples(out_dir, verify=False, limit=want)
    with atomic_path(out_dir / "grid.png") as tmp:
        if manifest["kind"] == "image":
            _image_grid(samples, tmp)
        else:
            ident = manifest["identity"]
            _scatter(samples, tmp, title=f"{ident['sampler']}, NFE {ident['nfe_budget'] or 'adaptive'}, "
                                         f"n = {len(samples)}")


def _image_grid(images: np.ndarray, path: Path) -> None:
    from PIL import Image
    from torchvision.utils import make_grid

    x = torch.from_numpy(images)
    scale = max(1, math.ceil(64 / x.shape[-1]))  # 8x8 digits -> 64x64 tiles, so the grid can be seen
    x = x.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
    grid = make_grid(x, nrow=8, padding=2, pad_value=255)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path, format="PNG")


def _scatter(points: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)
