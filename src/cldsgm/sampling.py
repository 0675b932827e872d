"""Sampling at scale: a score source (cldsgm.sources) sampled into a sharded, resumable directory (cldsgm.shards).

Image i of run `seed` is the same bytes whatever the batch size and however the run is split: its noise is a
function of (seed, i) (cldsgm.samplers.noise), and the network is evaluated on blocks of a fixed number of rows
(cldsgm.sources.FixedRowsNet). The ODE sampler is the exception: its adaptive steps are shared by the samples
integrated together, so its batch size is part of the run's identity and batches are aligned to global multiples
of it. The directory also gets `grid.png`, a preview of the first images or a scatter plot of the points.

Quantisation of images follows both reference codebases: x in [-1, 1] -> (x + 1) / 2 -> (255 y).clip(0, 255)
truncated to uint8 (not rounded; rounding shifts FID slightly).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cldsgm import catalog
from cldsgm.samplers import check_sampler, generate
from cldsgm.samplers.grids import check_t_min
from cldsgm.shards import ShardPlan, batch_edges, check_slice, covering, fill_shards, load_samples, read_manifest
from cldsgm.sources import ScoreSource
from cldsgm.utils.io import atomic_path

__all__ = ["check_nfe", "guide_source", "inpaint_to_dir", "quantize_images", "sample_to_dir"]


def check_nfe(sampler: str, nfe: int | None, options: dict | None = None, *, denoise: bool = True) -> None:
    """Refuse an NFE budget the fixed-step sampler cannot spend exactly (the record must say what was spent)."""
    if catalog.sampler(sampler).adaptive:
        if nfe is not None:
            raise ValueError(f"the {sampler} sampler is adaptive: give tolerances (--rtol/--atol), not --nfe")
        return
    if nfe is None:
        raise ValueError(f"sampler {sampler!r} needs --nfe")
    catalog.steps_for(sampler, nfe, options, denoise=denoise, exact=True)


PILOT_N = 256  # data points in the pilot batch of the sigma_d estimate


def resolve_precision_sigma(source: ScoreSource, sampler: str, options: dict, t_min: float) -> tuple[dict, dict | None]:
    """SSCS's exponential step without a given precision_sigma takes sigma_d from the model's own score Jacobian
    (cldsgm.samplers.precision.model_sigma_d), not a constant: returns the options with it and what it came from
    (None when nothing was estimated). A checkpoint's estimate is computed once and kept beside it in
    `precision_sigma.json` (keyed by the checkpoint's sha256 and t_min); an oracle's is recomputed (a second)."""
    if sampler != "sscs" or "precision_sigma" in options or options.get("score_step", "exponential") != "exponential":
        return options, None
    try:
        estimate = _cached_estimate(source, t_min)
    except (FileNotFoundError, ValueError) as err:  # e.g. an imported checkpoint: no training data beside it
        import warnings

        warnings.warn(f"sigma_d not measured ({err}); SSCS uses sigma_d = 0 (the point mass). Give "
                      f"--precision-sigma (a study: sampling.options.sscs.precision_sigma) to choose it.", stacklevel=2)
        return {**options, "precision_sigma": 0.0}, {"sigma_d": 0.0, "method": f"none: {err}"}
    return {**options, "precision_sigma": estimate["sigma_d"]}, {
        key: estimate[key] for key in ("sigma_d", "method", "n", "iterations", "seed", "t_min")}


def _cached_estimate(source: ScoreSource, t_min: float) -> dict:
    import json

    from filelock import FileLock

    from cldsgm.samplers.precision import METHOD, model_sigma_d

    def compute() -> dict:
        x0 = source.pilot_data(PILOT_N)
        return model_sigma_d(source.sde, source.score_fn, x0.to(torch.float32), t_min)

    checkpoint = source.identity.get("checkpoint")
    if checkpoint is None:
        return compute()
    path = Path(checkpoint).with_name("precision_sigma.json")
    if not os.access(path.parent, os.W_OK):  # a read-only run directory (a shared or pulled copy): not cached
        return compute()
    # the method is part of the key: an estimate made by an earlier estimator is not reused
    key = f"{source.identity['sha256']}:{source.identity.get('weights', 'ema')}:{t_min!r}:{METHOD}"
    with FileLock(str(path) + ".lock"):  # parallel sampling jobs of one model estimate it once
        stored = json.loads(path.read_text()) if path.is_file() else {}
        if key not in stored:
            stored[key] = compute()
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(stored, indent=1))
    return stored[key]


def guide_source(source: ScoreSource, guidance: dict, *, device="cpu") -> tuple[ScoreSource, dict]:
    """The source with its score guided towards a class, s + W grad_u log p(y | u_t) (cldsgm.conditional), and
    the manifest's record of it. ValueError (nothing written yet) for a classifier of another SDE or data shape, a
    class out of range, a negative scale, or "oracle" without an oracle source."""
    import dataclasses

    from cldsgm.conditional import guided_score, load_classifier, mixture_class_gradient

    label, scale = guidance["class"], float(guidance["scale"])
    if guidance["classifier"] == "oracle":
        if source.mixture is None:
            raise ValueError("--classifier oracle is the exact class posterior of an --oracle law; a checkpoint "
                             "needs a classifier run directory (`cldsgm train-classifier`)")
        gradient = mixture_class_gradient(source.mixture, source.sde, label)
        classifier = {"oracle": source.identity.get("oracle")}
    else:
        trained = load_classifier(guidance["classifier"], device=device)
        trained.check_fits(source.sde_name, source.sde_params, source.data_shape)
        gradient = trained.gradient(label)
        classifier = trained.identity
    record = {"classifier": classifier, "class": int(label), "scale": scale,
              # honest NFE: every score evaluation also evaluates the classifier's gradient (a forward and a
              # backward pass); the records' nfe counts score evaluations, so classifier_nfe = nfe (0 at scale 0)
              "classifier_nfe_per_score_nfe": 1 if scale > 0 else 0}
    return dataclasses.replace(source, score_fn=guided_score(source.score_fn, gradient, scale)), record


def quantize_images(x: Tensor) -> np.ndarray:
    """[-1, 1] float -> uint8 as the references do: ((x + 1) / 2 * 255).clip(0, 255), truncated."""
    y = ((x.detach().to(torch.float32).cpu() + 1.0) / 2.0 * 255.0).clamp(0, 255)
    return y.numpy().astype(np.uint8)  # astype truncates toward zero


def sample_to_dir(source: ScoreSource, out_dir: str | Path, *, sampler: str, nfe: int | None, n: int,
                  striding: str = "uniform", t_min: float = 1e-3, seed: int = 0, first: int = 0,
                  count: int | None = None, batch_size: int = 256, shard_size: int = 1000, options: dict | None = None,
                  denoise: bool = True, rank: int = 0, world: int = 1, device="cpu", precision: str = "fp32",
                  net_batch: int | None = None, progress: bool = True, labels: dict | None = None,
                  guidance: dict | None = None) -> dict:
    """Sample images [first, first + count) of a set of n into out_dir; resume what is there. Returns a summary.

    options: the sampler's own keyword arguments (SSCS variant, PC snr / n_corrector, ODE rtol / atol / method).
    rank, world: this process's share (torchrun): shards j with j mod world == rank.
    labels: what a study calls this set (source, row, variant, data, kind): kept in the manifest, copied into the
    records of its evaluations; not part of the run's identity.
    guidance: class-conditional sampling, {"classifier": a `train-classifier` run directory or "oracle" (the
    mixture's exact class posterior of an oracle source), "class": K, "scale": W} (see guide_source).
    Raises ValueError (bad arguments, NFE the sampler cannot honour) or SampleDirError.
    """
    options = dict(options or {})
    count = check_slice(n, first, count, batch_size, shard_size)
    check_sampler(source.sde, sampler)
    check_t_min(t_min)
    if striding not in catalog.STRIDINGS:
        raise ValueError(f"striding must be one of {catalog.STRIDINGS}, got {striding!r}")
    check_nfe(sampler, nfe, options, denoise=denoise)
    adaptive = catalog.sampler(sampler).adaptive
    options, precision_estimate = resolve_precision_sigma(source, sampler, options, t_min)
    identity = {**_set_identity(source, sampler, options, nfe, None if adaptive else striding, t_min, seed, n,
                                shard_size, denoise),
                "precision": precision, "net_batch": net_batch, "ode_batch": batch_size if adaptive else None}
    if source.speedups:  # absent when none: identities of sets made without them stay as they were
        identity["speedups"] = list(source.speedups)
    if precision_estimate is not None:
        identity["precision_sigma_from"] = precision_estimate
    if guidance is not None:  # sigma_d above is the unguided model's: the classifier does not change the step
        source, identity["guidance"] = guide_source(source, guidance, device=device)

    def draw(lo: int, hi: int) -> tuple[np.ndarray, int]:
        with torch.inference_mode():
            result = generate(source.sde, source.score_fn, hi - lo, source.data_shape, sampler=sampler, nfe=nfe,
                              t_min=t_min, striding=striding, seed=seed, first_index=lo, denoise=denoise,
                              device=device, **options)
        return _as_stored(source, result.x), result.nfe

    # adaptive batches start at global multiples of the batch size (their steps are shared by a batch)
    make_shard = _shard_maker(draw, batch_size, aligned=adaptive)
    out_dir = Path(out_dir)
    plan = ShardPlan(n, first, count, shard_size, rank, world)
    summary = fill_shards(out_dir, identity, source.kind, source.data_shape, make_shard, plan, device=device,
                          progress=progress, labels=labels)
    write_grid(out_dir)
    return summary


def _set_identity(source: ScoreSource, sampler: str, options: dict, nfe, striding, t_min: float, seed: int, n: int,
                  shard_size: int, denoise: bool) -> dict:
    """The identity fields every sample set has (a manifest's run identity; sample_to_dir and inpaint_to_dir add
    their own)."""
    return {"source": source.identity, "sde": source.sde_name, "sde_params": source.sde_params,
            "network": source.network, "sampler": sampler, "options": options, "nfe_budget": nfe,
            "striding": striding, "t_min": t_min, "seed": seed, "n": n, "shard_size": shard_size, "denoise": denoise}


def _as_stored(source: ScoreSource, x: Tensor) -> np.ndarray:
    """Samples as a shard stores them: quantised uint8 images, or float32 points."""
    return quantize_images(x) if source.kind == "image" else x.detach().to(torch.float32).cpu().numpy()


def _shard_maker(draw, batch_size: int, *, aligned: bool):
    """fill_shards' make_shard: shard [a, b) drawn in batches by draw(lo, hi) -> (samples, NFE per sample)."""
    def make_shard(a: int, b: int, bar):
        parts, nfe_total = [], 0
        edges = batch_edges(a, b, batch_size, aligned=aligned)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            samples, nfe = draw(lo, hi)
            parts.append(samples)
            nfe_total += nfe * (hi - lo)
            bar.update(hi - lo)
        return np.concatenate(parts), nfe_total / (b - a)
    return make_shard


def inpaint_to_dir(source: ScoreSource, out_dir: str | Path, *, images: str | Path, mask: str | Path | None = None,
                   mask_kind: str | None = None, sampler: str = "em", nfe: int, n: int | None = None,
                   striding: str = "uniform", t_min: float = 1e-3, seed: int = 0, batch_size: int = 256,
                   shard_size: int = 1000, options: dict | None = None, denoise: bool = True, device="cpu",
                   progress: bool = True, labels: dict | None = None) -> dict:
    """Inpaint the first n images of a prepared dataset file (`cldsgm prepare`'s .npz) into a sharded, resumable
    sample directory: the known pixels (mask 1) kept, the others drawn by the reverse process with replacement
    (cldsgm.conditional.inpaint). mask: a .npy / .npz ('mask') file of one image's shape or one per image, or
    mask_kind (a catalog.MASK_KINDS name, made from `seed`); the mask goes beside the shards as mask.npy (uint8, 1
    known, [1 or n, *data shape]). Bad input (shapes, kinds, a sampler inpainting does not run) raises ValueError
    before anything is written."""
    from cldsgm.conditional import check_mask, inpaint, mask_of
    from cldsgm.data.prepared import load_prepared, scale_images
    from cldsgm.utils.io import file_sha256

    if sampler not in catalog.inpaint_samplers():
        raise ValueError(f"inpainting runs the samplers {catalog.inpaint_samplers()}, not {sampler!r}")
    options = dict(options or {})
    check_t_min(t_min)
    check_nfe(sampler, nfe, options, denoise=denoise)
    data, _, manifest = load_prepared(images)
    if tuple(manifest["shape"]) != tuple(source.data_shape):
        raise ValueError(f"{images} holds data of shape {list(manifest['shape'])}; the score model's is "
                         f"{list(source.data_shape)}")
    n = len(data) if n is None else n
    if not 0 < n <= len(data):
        raise ValueError(f"--num-samples {n}: {images} has {len(data)} images")
    known = torch.from_numpy(data[:n])
    known = scale_images(known) if source.kind == "image" else known.float()
    if (mask is None) == (mask_kind is None):
        raise ValueError("give a mask file or a mask kind (one of them)")
    mask_id = ({"file": str(mask), "sha256": file_sha256(mask)} if mask is not None
               else {"kind": mask_kind, "seed": seed})
    mask_tensor = check_mask(mask_of(mask_id, source.data_shape), known)
    identity = {**_set_identity(source, sampler, options, nfe, striding, t_min, seed, n, shard_size, denoise),
                "inpaint": {"images": str(images), "images_sha256": manifest["sha256"], "mask": mask_id}}

    def draw(lo: int, hi: int) -> tuple[np.ndarray, int]:
        rows = mask_tensor if len(mask_tensor) == 1 else mask_tensor[lo:hi]
        with torch.inference_mode():
            result = inpaint(source.sde, source.score_fn, known[lo:hi].to(device), rows.to(device),
                             sampler=sampler, nfe=nfe, t_min=t_min, striding=striding, seed=seed, first_index=lo,
                             denoise=denoise, **options)
        stored = _as_stored(source, result.x)
        if source.kind == "image":  # the known pixels as the file has them: [-1, 1] and back can lose a level
            stored = np.where(np.broadcast_to(rows.cpu().numpy() > 0.5, stored.shape), data[lo:hi], stored)
        return stored, result.nfe

    make_shard = _shard_maker(draw, batch_size, aligned=False)
    out_dir = Path(out_dir)
    plan = ShardPlan(n, 0, n, shard_size, 0, 1)
    summary = fill_shards(out_dir, identity, source.kind, source.data_shape, make_shard, plan, device=device,
                          progress=progress, labels=labels)
    with atomic_path(out_dir / "mask.npy") as tmp:  # the mask itself, for a reader without torch (the report)
        with open(tmp, "wb") as handle:
            np.save(handle, (mask_tensor.cpu().numpy() > 0.5).astype(np.uint8))
    write_grid(out_dir)
    return summary


def write_grid(out_dir: Path) -> None:
    """grid.png: the first 64 images (8 x 8, small images enlarged), or a scatter plot of the points, once the
    directory holds them."""
    manifest = read_manifest(out_dir)
    n = manifest["identity"]["n"]
    want = min(n, 64 if manifest["kind"] == "image" else 5000)
    if covering(manifest, want) is None:
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
