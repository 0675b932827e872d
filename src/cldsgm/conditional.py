"""Conditional generation with a phase-space process: classifier guidance and inpainting.

What the PSLD reference code does (mandt-lab/PSLD: main/losses.py `tce_loss`, main/samplers/sde.py `cc_em_sde` and
`ip_em_sde`, main/datasets/inpaint.py), and what cldsgm does the same way:

- The noise-conditioned classifier sees the **whole state** u_t = (x_t, v_t) (its NCSN++ encoder takes 2C channels,
  `in_ch=6` for CIFAR-10) and the time t; it is trained by cross-entropy on u_t drawn from the forward kernel
  (HSM: v_0 marginalised, t uniform on [train_eps, T]).
- Guidance adds g g^T * W * grad_u log p(y | u_t) to the reverse drift (W the `clf_temp`): since the drift holds
  g g^T * s, this is the score s + W grad_u log p(y | u_t), the gradient taken for **both blocks**. For CLD g is zero
  on x, so only the v-block of the gradient acts; for PSLD both do. `guided_score` builds that score, and any sampler
  (EM, SSCS, the integrators, the ODE) can use it; the reference has it for EM only.
- Inpainting replaces, after every step, the **data and the momentum** of the known pixels by a joint draw of the
  forward kernel from the known image at the step's new time (HSM kernel: v_0 = 0 with its variance gamma M folded
  in), and does the same to the prior draw at t = 1; its masks are MNIST digits. `inpaint` does this for EM and
  SSCS with center, half and random masks (or a mask given), and puts the known pixels back exactly at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cldsgm import catalog
from cldsgm.samplers import SampleResult, denoise_step, start
from cldsgm.samplers.noise import CountingScore, PerSampleNoise, sample_seeds
from cldsgm.sde.phase_space import PhaseSpaceSDE

__all__ = ["ClassifierGradient", "TrainedClassifier", "check_label", "check_mask",
           "guided_score", "inpaint", "load_classifier", "make_mask", "mask_of", "mixture_class_gradient",
           "read_mask"]

# the replacement draws come from their own per-sample streams: the sampler's noise stays what it is unconditioned
_REPLACEMENT_SALT = 0x5EED_1A7E


def check_label(label: int, num_classes: int) -> int:
    """The class index as an int; ValueError when it is not one of 0 ... num_classes - 1."""
    if isinstance(label, bool) or int(label) != label or not 0 <= int(label) < num_classes:
        raise ValueError(f"class {label!r} is out of range: this classifier knows classes 0 ... {num_classes - 1}")
    return int(label)


def guided_score(score_fn, class_gradient, scale: float):
    """(u, t) -> s(u, t) + scale * grad_u log p(y | u_t): the score of p_t(u | y) for scale 1, sharper above.

    class_gradient: (u, t) -> grad_u log p(y | u_t), [B, state channels, ...] like u (ClassifierGradient, or
    mixture_class_gradient for an exact-score oracle). scale 0 is the unconditioned score (no classifier call).
    """
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"the guidance scale must be a finite number >= 0, got {scale!r}")
    if scale == 0:
        return score_fn

    def score(u: Tensor, t: Tensor) -> Tensor:
        return score_fn(u, t) + scale * class_gradient(u, t).to(u.dtype)
    return score


class ClassifierGradient:
    """grad_u log softmax(classifier(u_t, t))[y] for a noise-conditioned classifier of the whole state, by autograd
    (inside inference mode too); counts its evaluations in `nfe`.

    classifier: (u [B, 2C, ...] float32, t float [B]) -> logits [B, K]; label: the class y asked for.
    """

    def __init__(self, classifier, label: int, num_classes: int):
        self.classifier, self.label, self.nfe = classifier, check_label(label, num_classes), 0

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        t = torch.as_tensor(t, dtype=torch.float32, device=u.device).expand(u.shape[0])
        with torch.inference_mode(False), torch.enable_grad():
            u_in = u.detach().clone().to(torch.float32).requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(u_in, t.clone()), dim=-1)
            (grad,) = torch.autograd.grad(log_probs[:, self.label].sum(), u_in)
        return grad.to(u.dtype)


@dataclass
class TrainedClassifier:
    """A noise-conditioned classifier of a training run (`cldsgm train-classifier`), its EMA weights in eval mode."""

    net: torch.nn.Module
    sde_name: str
    sde_params: dict
    data_shape: tuple
    num_classes: int
    identity: dict = field(default_factory=dict)  # checkpoint path, sha256, step: what a manifest records

    def check_fits(self, sde_name: str, sde_params: dict, data_shape) -> None:
        """ValueError (one line) unless this classifier was trained on the states of this SDE for data of this
        shape: its gradient means nothing for another process's states."""
        if (self.sde_name, dict(self.sde_params)) != (sde_name, dict(sde_params)):
            raise ValueError(f"the classifier {self.identity.get('checkpoint')} was trained for {self.sde_name} "
                             f"{self.sde_params}, the score model is {sde_name} {dict(sde_params)}: train the "
                             "classifier on the score model's SDE")
        if tuple(self.data_shape) != tuple(data_shape):
            raise ValueError(f"the classifier {self.identity.get('checkpoint')} was trained on data of shape "
                             f"{list(self.data_shape)}, the score model on {list(data_shape)}")

    def gradient(self, label: int) -> ClassifierGradient:
        return ClassifierGradient(self.net, label, self.num_classes)


def load_classifier(path: str | Path, *, device="cpu") -> TrainedClassifier:
    """The classifier of a `cldsgm train-classifier` run directory (or its checkpoint.pt). Raises FileNotFoundError,
    or ValueError for a checkpoint that is not a classifier's (a score model's, say)."""
    from cldsgm.models.registry import CLASSIFIERS, build_network
    from cldsgm.training.checkpoint import load_checkpoint
    from cldsgm.utils.io import file_sha256, project_path

    path = Path(path)
    path = path / "checkpoint.pt" if path.is_dir() else path
    state = load_checkpoint(path)
    network = state["network"]
    if state["config"].get("task") != "classifier" or network["name"] not in CLASSIFIERS:
        raise ValueError(f"{path} is not a classifier's checkpoint (network {network['name']!r}): give the run "
                         "directory of `cldsgm train-classifier`")
    net = build_network(network["name"], **network["options"])
    net.load_state_dict(state["ema"])
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    sde = state["config"]["sde"]
    identity = {"checkpoint": project_path(path), "sha256": file_sha256(path), "step": int(state["step"])}
    return TrainedClassifier(net, sde["name"], dict(sde["params"]), tuple(state["data"]["shape"]),
                             int(network["options"]["num_classes"]), identity)


def mixture_class_gradient(law, sde, label: int):
    """The exact grad_u log p(y = label | u_t) of a GaussianMixture whose component is the class: the score of the
    component's own perturbed law minus the mixture's (Bayes: p(y | u) = w_y p_y(u) / p(u))."""
    label = check_label(label, len(law.weights))
    component = law.component(label).score_fn(sde)
    mixture = law.score_fn(sde)
    return lambda u, t: component(u, t) - mixture(u, t)


# -- inpainting -------------------------------------------------------------------------------------------------
def make_mask(kind: str, data_shape, *, seed: int = 0) -> Tensor:
    """A mask of one data sample's shape, 1 where the pixel is known, 0 where it is to be filled in.

    center: the central square of half the side missing (images [C, H, W]); half: the right half of the columns
    missing (images) or the second half of the coordinates (vectors [d]); random: each pixel (all its channels) known
    with probability 1/2, from `seed`; none: nothing known, so that inpainting is unconditional sampling judged against
    the same images (the baseline of a study's inpainting rows).
    """
    shape = tuple(data_shape)
    mask = torch.ones(shape)
    if kind == "center":
        if len(shape) != 3:
            raise ValueError(f"the center mask needs images [C, H, W], not data of shape {shape}")
        _, h, w = shape
        mask[:, h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = 0
    elif kind == "half":
        if len(shape) == 3:
            mask[..., shape[-1] // 2:] = 0
        else:
            mask.view(-1)[mask.numel() // 2:] = 0
    elif kind == "random":
        generator = torch.Generator().manual_seed(seed)
        pixels = (torch.rand(shape[1:] if len(shape) == 3 else shape, generator=generator) < 0.5).float()
        mask = pixels.expand(shape).clone()
    elif kind == "none":
        mask.zero_()
    else:
        raise ValueError(f"mask kind must be one of {catalog.MASK_KINDS}, got {kind!r}")
    return mask


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as float32: a .npy array, or the 'mask' array of a .npz (data only: no pickles)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "mask" not in loaded.files:
                    raise ValueError(f"the mask file {path} has no array 'mask' (it has {loaded.files})")
                loaded = loaded["mask"]
        return np.asarray(loaded, dtype=np.float32)
    except (OSError, EOFError, TypeError) as err:  # not an array file, or one of objects
        raise ValueError(f"the mask file {path} is not a .npy or .npz array ({err})") from None


def mask_of(mask_id: dict, data_shape) -> Tensor:
    """The mask an inpainted set's manifest names: {"file": path, ...} (read_mask) or {"kind", "seed"} (make_mask)."""
    if "file" in mask_id:
        return torch.from_numpy(read_mask(mask_id["file"]))
    return make_mask(mask_id["kind"], data_shape, seed=mask_id["seed"])


def check_mask(mask: Tensor, x_known: Tensor) -> Tensor:
    """The mask as float [B or 1, C, ...] of zeros and ones; ValueError for a wrong shape or other values."""
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) == tuple(x_known.shape[1:]):
        mask = mask[None]
    if mask.shape[1:] != x_known.shape[1:] or mask.shape[0] not in (1, x_known.shape[0]):
        raise ValueError(f"the mask has shape {tuple(mask.shape)}; the images have {tuple(x_known.shape)}: give one "
                         f"mask of shape {tuple(x_known.shape[1:])} or one per image")
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("the mask must hold only 0 (missing) and 1 (known)")
    return mask.to(x_known.dtype)


def inpaint(sde, score_fn, x_known: Tensor, mask: Tensor, *, sampler: str = "em", nfe: int, t_min: float = 1e-3,
            striding: str = "uniform", seed: int = 0, first_index: int = 0, denoise: bool = True,
            dtype=torch.float32, **options) -> SampleResult:
    """Fill in the missing pixels of x_known [B, C, ...] (mask 1 = known) with the reverse process, the reference's
    replacement method: after the prior draw and after every step, the known pixels' x and v are replaced by a joint
    draw of the forward kernel from x_known at the new time. The result has the known pixels exactly.

    sampler: em or sscs (options: SSCS's own); nfe counts the score's evaluations as `generate` does.
    """
    if not isinstance(sde, PhaseSpaceSDE):
        raise ValueError(f"inpainting needs a phase-space SDE (CLD or PSLD), not {type(sde).__name__}")
    if sampler not in catalog.inpaint_samplers():
        raise ValueError(f"inpainting runs the samplers {catalog.inpaint_samplers()}, not {sampler!r}")
    spec = catalog.sampler(sampler, catalog.sde_name(sde))
    x_known = x_known.to(dtype)
    mask = check_mask(mask, x_known)
    n = x_known.shape[0]
    ts, noise, u_prior = start(sde, sampler, n, x_known.shape[1:], nfe=nfe, t_min=t_min, striding=striding,
                               seed=seed, first_index=first_index, denoise=denoise, dtype=dtype,
                               device=x_known.device, options=options)
    replacement = PerSampleNoise(sample_seeds(seed ^ _REPLACEMENT_SALT, first_index, n, device=x_known.device))
    state_shape = u_prior.shape[1:]

    def impose(u: Tensor, t: Tensor) -> Tensor:
        known = sde.perturb(x_known, t.expand(n), "hsm", eps=replacement.normal(state_shape, dtype=dtype,
                                                                                  device=u.device)).u
        (x, v), (x_k, v_k) = sde.split(u), sde.split(known.to(u.dtype))
        return sde.join(x * (1 - mask) + x_k * mask, v * (1 - mask) + v_k * mask)

    counting = CountingScore(score_fn)
    step = spec.load()
    u = impose(u_prior, ts[0])
    for k in range(len(ts) - 1):
        u = impose(step(sde, counting, u, ts[k: k + 2], noise=noise, denoise=False, **options), ts[k + 1])
    if denoise:
        u = denoise_step(sde, counting, u, ts[-1])
    x, v = sde.split(u)
    u = sde.join(x * (1 - mask) + x_known * mask, v)  # the known pixels exactly, as the data they are
    return SampleResult(sde.split(u)[0], u, counting.nfe)
