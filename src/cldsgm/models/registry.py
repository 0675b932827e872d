"""Named network configurations and `build_network`: the one place that turns a name + options into a module."""

from __future__ import annotations

from torch import nn

from cldsgm.models.ncsnpp import NCSNpp, NCSNppClassifier
from cldsgm.models.toy import ToyClassifier, ToyMLP, ToyResNet

__all__ = ["CLASSIFIERS", "PRESETS", "build_network", "count_parameters"]

_CIFAR = {"image_size": 32, "nf": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 8, "attn_resolutions": (16,),
          "dropout": 0.1, "fir": True, "progressive_input": "residual", "embedding": "fourier"}

# preset -> (class, options). Channel counts follow the SDE: CLD 6 -> 3, PSLD 6 -> 6, VPSDE 3 -> 3 on RGB.
PRESETS = {
    "ncsnpp_cifar10_cld": (NCSNpp, {**_CIFAR, "in_channels": 6, "out_channels": 3}),
    "ncsnpp_cifar10_vpsde": (NCSNpp, {**_CIFAR, "in_channels": 3, "out_channels": 3}),
    # PSLD SOTA CIFAR-10 run (its released config): ch_mult (2,2,2), 8 blocks, dropout 0.15, FIR, Fourier.
    "ncsnpp_cifar10_psld": (NCSNpp, {**_CIFAR, "ch_mult": (2, 2, 2), "dropout": 0.15, "in_channels": 6,
                                     "out_channels": 6}),
    # PSLD config default / ablations: (1,2,2,2), 4 blocks, positional embedding, no FIR.
    "ncsnpp_cifar10_psld_small": (NCSNpp, {**_CIFAR, "num_res_blocks": 4, "fir": False, "embedding": "positional",
                                           "progressive_input": "none", "in_channels": 6, "out_channels": 6}),
    # CPU-sized: the same architecture for 8x8 single-channel digits (CLD: x, v in; eps_v out).
    "ncsnpp_digits": (NCSNpp, {"image_size": 8, "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
                               "attn_resolutions": (4,), "dropout": 0.0, "fir": True,
                               "progressive_input": "residual", "embedding": "fourier", "in_channels": 2,
                               "out_channels": 1}),
    "toy_mlp": (ToyMLP, {"in_channels": 4, "out_channels": 2}),
    # noise-conditioned classifiers of the whole state; num_classes comes from the data's labels
    "toy_classifier": (ToyClassifier, {"in_channels": 4}),
    "ncsnpp_digits_classifier": (NCSNppClassifier, {"image_size": 8, "nf": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
                                                    "attn_resolutions": (4,), "dropout": 0.0, "fir": True,
                                                    "progressive_input": "residual", "embedding": "fourier",
                                                    "in_channels": 2}),
    "toy_resnet": (ToyResNet, {"in_channels": 4, "out_channels": 2}),
}


CLASSIFIERS = ("toy_classifier", "ncsnpp_digits_classifier")  # the presets that output class logits


def build_network(name: str, **overrides) -> nn.Module:
    """The preset `name` with keyword overrides; unknown names or keys raise ValueError naming them."""
    if name not in PRESETS:
        raise ValueError(f"unknown network {name!r}; choose from {sorted(PRESETS)}")
    cls, options = PRESETS[name]
    import inspect

    def named(klass) -> set:  # explicit keyword parameters, through **options to the parent class
        params = inspect.signature(klass.__init__).parameters
        keywords = {k for k, v in params.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)} - {"self"}
        passes_on = any(v.kind == v.VAR_KEYWORD for v in params.values())
        return keywords | (named(klass.__mro__[1]) - {"out_channels"} if passes_on else set())

    allowed = named(cls)
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for network {name!r}; allowed: {sorted(allowed)}")
    return cls(**{**options, **overrides})


def count_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
