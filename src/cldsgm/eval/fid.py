"""FID and KID through clean-fid's own code, fully offline.

clean-fid's pieces are used as they are: its `InceptionV3W` wrapper around NVIDIA's TorchScript Inception
(`inception-2015-12-05.pt`), its resizer and image-to-tensor conversion for `mode` 'clean' (PIL bicubic to
299) or 'legacy_tensorflow' (resize inside the network, the TF-Inception numbers of older papers), and its
`frechet_distance` and `kernel_distance`. What we do not use is clean-fid's loader: it reads the weights
from /tmp and downloads them when absent. We read them from a path the user gives (`--inception`,
$CLDSGM_INCEPTION, else resources/inception-2015-12-05.pt), never download, and never write to clean-fid's
global location (a stand-in written there would silently poison every later FID on the machine).

Reference statistics (mu, sigma and the features, for KID) are computed by `fid-stats` over a prepared
split and stored as .npz; a user-supplied statistics file with `mu` and `sigma` (e.g. the 50k CIFAR-10
training statistics the papers use) is accepted, its dimension checked.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from cldsgm import catalog
from cldsgm.utils.io import atomic_path, file_sha256, project_path

__all__ = ["DEFAULT_INCEPTION", "FEATURE_DIM", "INCEPTION_ENV", "INCEPTION_FILE", "MODES", "frechet", "inception_path",
           "inception_features", "kid", "load_inception", "load_stats", "reference_stats", "save_stats",
           "score_images"]

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_ENV = "CLDSGM_INCEPTION"
DEFAULT_INCEPTION = Path("resources") / INCEPTION_FILE
MODES = catalog.FID_MODES
FEATURE_DIM = 2048
INCEPTION_HELP = (
    "FID needs NVIDIA's TorchScript Inception file {name} (the one clean-fid and StyleGAN2-ADA use, published at "
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{name}). Nothing is downloaded "
    "here: fetch it once on a machine with internet, then pass --inception PATH or set ${env}.")


def inception_path(path: str | Path | None = None) -> Path:
    """--inception PATH, else $CLDSGM_INCEPTION, else resources/inception-2015-12-05.pt."""
    return Path(path or os.environ.get(INCEPTION_ENV) or DEFAULT_INCEPTION)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"FID mode must be one of {MODES}, got {mode!r}")


def load_inception(path: str | Path | None, mode: str, device="cpu"):
    """clean-fid's InceptionV3W over the file at `path` (any name), on `device`. Returns (model, file sha256).

    Raises FileNotFoundError with where the file comes from; never downloads.
    """
    _check_mode(mode)
    path = inception_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights not found at {path}. "
                                + INCEPTION_HELP.format(name=INCEPTION_FILE, env=INCEPTION_ENV))
    from cleanfid.inception_torchscript import InceptionV3W

    # the wrapper loads <dir>/inception-2015-12-05.pt: give it a private directory with that name in it
    with tempfile.TemporaryDirectory(prefix="cldsgm-inception-") as tmp:
        os.symlink(path.absolute(), Path(tmp) / INCEPTION_FILE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: "torch.jit.load is deprecated"
            model = InceptionV3W(tmp, download=False, resize_inside=mode == "legacy_tensorflow")
    return model.to(device).eval(), file_sha256(path)


def _resize_dataset(images: np.ndarray, mode: str):
    """clean-fid's ResizeDataset, reading uint8 [N, C, H, W] arrays instead of image files."""
    from cleanfid.utils import ResizeDataset

    class ArrayResizeDataset(ResizeDataset):
        def __getitem__(self, i):
            img_np = np.ascontiguousarray(images[i].transpose(1, 2, 0))  # HWC, as clean-fid reads files
            if img_np.shape[2] == 1:  # grayscale -> RGB, as PIL's convert('RGB') does for files
                img_np = np.repeat(img_np, 3, axis=2)
            img_np = self.custom_image_tranform(img_np)
            img_resized = self.fn_resize(img_np)
            if img_resized.dtype == "uint8":  # the same conversion as ResizeDataset.__getitem__
                return self.transforms(np.array(img_resized)) * 255
            return self.transforms(img_resized)

    return ArrayResizeDataset(list(range(len(images))), mode=mode)


def inception_features(images: np.ndarray, model, mode: str, *, batch_size: int = 64, device="cpu",
                       progress: bool = False) -> np.ndarray:
    """Inception pool features [N, 2048] (float64) of uint8 images [N, C, H, W], C in {1, 3}."""
    from cleanfid.fid import get_batch_features

    from cldsgm.utils.progress import Progress

    _check_mode(mode)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"FID takes uint8 images [N, 1 or 3, H, W], got {images.dtype} {images.shape}")
    loader = torch.utils.data.DataLoader(_resize_dataset(images, mode), batch_size=batch_size, shuffle=False,
                                         num_workers=0)
    bar = Progress("inception", len(images), unit="img", enabled=progress)
    feats = []
    for batch in loader:
        feats.append(get_batch_features(batch, model, device))
        bar.update(len(batch))
    bar.close()
    return np.concatenate(feats).astype(np.float64)


def save_stats(path: str | Path, features: np.ndarray, meta: dict) -> None:
    """mu, sigma and the features (for KID) with a JSON `meta` string, atomically."""
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, mu=mu, sigma=sigma, features=features.astype(np.float32), meta=json.dumps(meta))


def load_stats(path: str | Path, *, dim: int = FEATURE_DIM) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """(mu, sigma, features or None, meta) of a statistics file; ValueError if unreadable or of another dimension."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID statistics file {path} not found; make it with `cldsgm fid-stats`")
    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = data["mu"], data["sigma"]
            features = data["features"].astype(np.float64) if "features" in data.files else None
            meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"FID statistics file {path} is unreadable or lacks mu/sigma ({err})") from err
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"FID statistics file {path} has mu {mu.shape} and sigma {sigma.shape}; the Inception "
                         f"features are {dim}-dimensional (mu ({dim},), sigma ({dim}, {dim}))")
    return mu, sigma, features, meta


def frechet(features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """clean-fid's frechet_distance between N(mean, cov) of `features` and the reference; tiny negatives -> 0."""
    import scipy.linalg
    from cleanfid.fid import frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy 1.17: sqrtm(disp=...) (pinned < 1.18)
        # a singular product (fewer samples than feature dimensions) is expected; clean-fid handles it
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        value = frechet_distance(features.mean(0), np.cov(features, rowvar=False), mu_ref, sigma_ref)
    # a set against its own statistics gives about -2e-4 from sqrtm's rounding: a distance is >= 0
    return max(float(value), 0.0)


def kid(features: np.ndarray, ref_features: np.ndarray, *, seed: int = 0) -> float:
    """clean-fid's kernel_distance (100 subsets of at most 1000), with its subset draws seeded."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()  # noqa: NPY002 - clean-fid uses the legacy global generator
    np.random.seed(seed)  # noqa: NPY002 - kernel_distance draws its subsets from it
    try:
        return float(kernel_distance(features, ref_features))
    finally:
        np.random.set_state(state)  # noqa: NPY002


def reference_stats(stats_path: str | Path, inception: str | Path | None, mode: str, device="cpu") -> dict:
    """The cheap checks of an FID, before any feature is computed: the Inception weights exist, the statistics read
    and were computed in `mode`. Returns {'mu', 'sigma', 'features' (or None), 'meta'}; FileNotFoundError or
    ValueError naming the file."""
    if not inception_path(inception).is_file():
        load_inception(inception, mode, device)  # raises the error that says where to get the file
    mu, sigma, features, meta = load_stats(stats_path)
    if meta.get("mode") not in (None, mode):
        raise ValueError(f"{stats_path} was computed in mode {meta['mode']!r}, not {mode!r}; FID modes are not "
                         "interchangeable")
    return {"mu": mu, "sigma": sigma, "features": features, "meta": meta,
            "dataset": {"stats": project_path(stats_path), **meta.get("dataset", {})}}


def score_images(images: np.ndarray, reference: dict, inception: str | Path | None, mode: str, *,
                 batch_size: int = 64, device="cpu", with_kid: bool = True, resamples: int = 0,
                 resample_seed: int = 0) -> dict:
    """FID (and KID where the reference holds features) of uint8 images [N, C, H, W] against `reference_stats`.

    Returns {'fid', 'kid' (None without reference features or with with_kid off), 'n', 'backbone' (the Inception
    file's sha256), 'wall_s'}, and with resamples (at least 100) 'fid_replicates' (FID of resamples of the images,
    cldsgm.eval.bootstrap) and 'kid_replicates' (KID over resamples of its 100 subsets).
    """
    import time

    from cldsgm.eval.bootstrap import frechet_replicates, kid_subsets

    model, backbone = load_inception(inception, mode, device)
    start = time.perf_counter()
    feats = inception_features(images, model, mode, batch_size=batch_size, device=device, progress=True)
    value = frechet(feats, reference["mu"], reference["sigma"])
    out = {"fid": value, "kid": None, "n": len(images), "backbone": backbone}
    has_features = with_kid and reference["features"] is not None
    if has_features:
        out["kid"], terms = kid_subsets(feats, reference["features"])
    if resamples:
        from cldsgm import stats

        counts = stats.resample_counts(len(feats), resamples, resample_seed)
        out["fid_replicates"] = frechet_replicates(feats, reference["mu"], reference["sigma"], counts, device=device)
        if has_features:
            picks = stats.resample_counts(len(terms), resamples, resample_seed)
            out["kid_replicates"] = picks @ terms / len(terms)
    out["wall_s"] = time.perf_counter() - start
    return out
