"""The authors' released NCSN++ checkpoints in our modules: CLD-SGM `checkpoint_*.pth` and PSLD Lightning `.ckpt`.

The reference keeps every layer in one flat `all_modules` list in build order; ours names them by role
(`down`, `pyramid`, `mid`, `up`). `reference_modules` lists our modules in the reference's order, and one rule
(`_our_name`) names each of their tensors in ours. Both networks compute the same function; only names, order and
the attention projections differ: the reference's `NIN_k.W` is a (C_in, C_out) matrix applied as `x @ W`, ours a
1x1 convolution, so `weight = W.T[:, :, None, None]` (reshaping without the transpose loads without error on a
square matrix and is wrong).

File layouts (read with `torch.load(weights_only=True)` only):
  cld-sgm: {'model': DDP state_dict ('module.' prefix, raw weights), 'ema': {'shadow_params': [tensors in the
           order of the trainable parameters, i.e. the state_dict without the frozen Fourier 'all_modules.0.W']},
           'optimizer', 'step'}
  psld:    {'state_dict': {'score_fn.*': raw, 'ema_score_fn.*': EMA}, ...}  (no SDE hyperparameters)
"""

from __future__ import annotations

import re

from torch import Tensor, nn

from cldsgm import catalog
from cldsgm.models.layers import AttnBlock, FIRConvDown, PadConvDown
from cldsgm.models.ncsnpp import NCSNpp

__all__ = ["ReferenceWeights", "from_reference", "read_reference", "reference_modules"]

_KEY = re.compile(r"^all_modules\.(\d+)\.(.+)$")
_LISTED = 12  # problems named per kind in an error; the rest are counted


class ReferenceWeights(dict):
    """{'raw': state_dict, 'ema': state_dict, 'step': int} with reference (`all_modules.k.*`) keys."""


def reference_modules(net: NCSNpp) -> list[nn.Module]:
    """Our modules in the order of the reference's `all_modules`: [Fourier W] -> time MLP x2 -> input conv ->
    per level its down blocks then that level's input-pyramid conv -> 3 middle blocks -> up levels (coarsest
    first) -> output GroupNorm -> output conv."""
    order: list[nn.Module] = [net.fourier] if net.embedding == "fourier" else []
    order += [net.temb[0], net.temb[2], net.conv_in]
    for level, stage in enumerate(net.down):
        order += list(stage)
        if level < len(net.pyramid):  # one pyramid conv per level but the last, only with a residual pyramid
            order.append(net.pyramid[level])
    order += list(net.mid)
    for stage in net.up:
        order += list(stage)
    return order + [net.norm_out, net.conv_out]


def _our_name(module: nn.Module, suffix: str) -> str:
    """Our parameter name inside `module` for the reference's `suffix` (the part after `all_modules.k.`)."""
    if isinstance(module, FIRConvDown | PadConvDown):  # reference Downsample(with_conv) wraps one conv
        prefix = "Conv2d_0." if isinstance(module, FIRConvDown) else "Conv_0."
        return suffix[len(prefix):] if suffix.startswith(prefix) else f"?{suffix}"
    if isinstance(module, AttnBlock):
        return re.sub(r"^(NIN_\d)\.W$", r"\1.weight", re.sub(r"^(NIN_\d)\.b$", r"\1.bias", suffix))
    return suffix


def _is_nin_matrix(module: nn.Module, suffix: str) -> bool:
    return isinstance(module, AttnBlock) and re.fullmatch(r"NIN_\d\.W", suffix) is not None


def from_reference(net: NCSNpp, reference: dict[str, Tensor], *, what: str = "checkpoint") -> dict[str, Tensor]:
    """Our state_dict from a reference state_dict (keys `all_modules.k.*`, no prefix), every tensor checked.

    Raises ValueError listing unknown, missing and mis-shaped tensors together; nothing is loaded partially.
    """
    modules = reference_modules(net)
    names = {id(m): name for name, m in net.named_modules()}
    ours = net.state_dict()
    converted, unknown, misshaped, misshaped_ours = {}, [], [], set()
    for key, tensor in reference.items():
        match = _KEY.match(key)
        if not match or int(match.group(1)) >= len(modules):
            unknown.append(key)
            continue
        module = modules[int(match.group(1))]
        name = f"{names[id(module)]}.{_our_name(module, match.group(2))}".lstrip(".")
        if name not in ours:
            unknown.append(f"{key} (no {name} in ours)")
            continue
        if _is_nin_matrix(module, match.group(2)) and tensor.ndim == 2:
            tensor = tensor.t()[:, :, None, None]  # x @ W  ==  conv1x1 with weight W^T
        if tuple(tensor.shape) != tuple(ours[name].shape):
            misshaped.append(f"{key} {list(tensor.shape)} -> {name} {list(ours[name].shape)}")
            misshaped_ours.add(name)
            continue
        converted[name] = tensor.detach().to(ours[name].dtype).contiguous()
    missing = [name for name in ours if name not in converted and name not in misshaped_ours]
    problems = [(kind, items) for kind, items in (("unknown", unknown), ("missing", missing),
                                                   ("mis-shaped", misshaped)) if items]
    if problems:
        lines = "; ".join(f"{len(items)} {kind}: {', '.join(items[:_LISTED])}{' ...' if len(items) > _LISTED else ''}"
                          for kind, items in problems)
        raise ValueError(f"{what} does not fit network of {len(ours)} tensors ({lines})")
    return converted


def _found(state) -> str:
    return sorted(state)[:8] if isinstance(state, dict) else type(state).__name__


def read_reference(state, fmt: str, *, fourier: bool, what: str = "checkpoint") -> ReferenceWeights:
    """Raw and EMA reference state_dicts and the step from a loaded file of format `fmt` ('cld-sgm' | 'psld').

    fourier: whether the network has the frozen Fourier `W` (all_modules.0.W), which the CLD-SGM EMA list skips.
    Raises ValueError naming what is wrong (another format, a mismatched EMA list, stray keys).
    """
    if fmt not in catalog.CHECKPOINT_FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose from {list(catalog.CHECKPOINT_FORMATS)}")
    if not isinstance(state, dict):
        raise ValueError(f"{what} holds a {type(state).__name__}, not a checkpoint dict")
    if fmt == "cld-sgm":
        if "state_dict" in state and "model" not in state:
            raise ValueError(f"{what} is a PyTorch Lightning file (key 'state_dict'): a PSLD checkpoint? "
                             "use --format psld")
        if not {"model", "ema"} <= set(state) or not isinstance(state["ema"], dict) \
                or "shadow_params" not in state["ema"]:
            raise ValueError(f"{what} is not a CLD-SGM checkpoint: expected keys 'model', 'ema' (with "
                             f"'shadow_params'), 'optimizer', 'step'; found {_found(state)}")
        raw = {re.sub(r"^module\.", "", k): v for k, v in state["model"].items()}
        trainable = [k for k in raw if not (fourier and k == "all_modules.0.W")]
        shadow = state["ema"]["shadow_params"]
        if len(shadow) != len(trainable):
            raise ValueError(f"{what}: the EMA list holds {len(shadow)} tensors but the model has {len(trainable)} "
                             "trainable parameters; the file is damaged or of another network")
        bad = [f"{k} {list(raw[k].shape)} vs EMA {list(s.shape)}" for k, s in zip(trainable, shadow, strict=True)
               if tuple(raw[k].shape) != tuple(s.shape)]
        if bad:
            raise ValueError(f"{what}: EMA tensors out of order with the model's ({'; '.join(bad[:_LISTED])})")
        ema = {**raw, **dict(zip(trainable, shadow, strict=True))}
        return ReferenceWeights(raw=raw, ema=ema, step=int(state.get("step", 0)))
    if "state_dict" not in state:
        hint = " (keys 'model' and 'ema': a CLD-SGM checkpoint? use --format cld-sgm)" if "model" in state else ""
        raise ValueError(f"{what} is not a PSLD Lightning checkpoint: no 'state_dict'; found {_found(state)}{hint}")
    raw, ema, stray = {}, {}, []
    for key, value in state["state_dict"].items():
        if key.startswith("ema_score_fn."):
            ema[key[len("ema_score_fn."):]] = value
        elif key.startswith("score_fn."):
            raw[key[len("score_fn."):]] = value
        else:
            stray.append(key)
    if stray or not ema:
        found = f"stray keys: {', '.join(stray[:_LISTED])}" if stray else "no ema_score_fn.* tensors"
        raise ValueError(f"{what}: a PSLD file holds score_fn.* and ema_score_fn.* only; {found}")
    return ReferenceWeights(raw=raw or dict(ema), ema=ema, step=int(state.get("global_step", 0)))
