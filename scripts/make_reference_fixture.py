"""Write reference-format NCSN++ checkpoints and the authors' network output on a fixed input.

Runs the authors' own modules (not ours) from local checkouts, so that `tests/test_reference_import.py` checks
our import against the real thing without needing their code:

    git clone https://github.com/nv-tlabs/CLD-SGM /tmp/CLD-SGM
    git clone https://github.com/mandt-lab/PSLD /tmp/PSLD
    python scripts/make_reference_fixture.py --cld-sgm /tmp/CLD-SGM --psld /tmp/PSLD --out tests/data/reference
    python scripts/make_reference_fixture.py --cld-sgm /tmp/CLD-SGM --psld /tmp/PSLD --out /tmp/full --full

Per layout it writes `<layout>.pth|.ckpt` (the released file's structure: CLD-SGM {'model' with a DDP 'module.'
prefix, 'ema': {'shadow_params': [...]}, 'optimizer', 'step'}; PSLD Lightning {'state_dict': score_fn.* and
ema_score_fn.*}) with every weight randomised (raw and EMA different), and `<layout>_expected.pt`: the input u, t,
our NCSNpp options and the reference network's output with the EMA weights in eval mode.
Tiny (default, committed): nf = 16 on 8x8 images with an input pyramid and attention; CLD-SGM with FIR + Fourier,
PSLD with the plain (non-FIR) pyramid + positional embedding. `--full`: the real CIFAR-10 sizes (not committed).
Their CUDA extension is never built: `torch.utils.cpp_extension.load` is stubbed and their CPU path is used.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.utils.cpp_extension

TINY = {"image_size": 8, "nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,)}
# our presets at full size (registry.py): CLD-SGM CIFAR-10, PSLD SOTA CIFAR-10
FULL = {"cld-sgm": {"image_size": 32, "nf": 128, "ch_mult": (1, 2, 2, 2), "num_res_blocks": 8,
                    "attn_resolutions": (16,)},
        "psld": {"image_size": 32, "nf": 128, "ch_mult": (2, 2, 2), "num_res_blocks": 8, "attn_resolutions": (16,)}}


def _package(name: str, folder: Path):
    """Import `folder` as package `name` without running any parent package's __init__ (PSLD's pulls Lightning)."""
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _no_cuda_build(*args, **kwargs):  # their op/ compiles CUDA kernels at import; the CPU path needs none
    return None


def cld_sgm_network(root: Path, size: dict, fir: bool, embedding: str):
    torch.utils.cpp_extension.load = _no_cuda_build
    sys.path.insert(0, str(root))  # for `op` and `util.strings`
    _package("cldsgm_ref_models", root / "models")
    ncsnpp = importlib.import_module("cldsgm_ref_models.ncsnpp")
    config = SimpleNamespace(
        sde="cld", n_channels=size["nf"], ch_mult=",".join(map(str, size["ch_mult"])),
        n_resblocks=size["num_res_blocks"], attn_resolutions=",".join(map(str, size["attn_resolutions"])),
        dropout=0.1, resamp_with_conv=True, image_size=size["image_size"], use_fir=fir, fir_kernel="1,3,3,1",
        skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="residual",
        embedding_type=embedding, init_scale=0.0, fourier_scale=16.0, progressive_combine="sum",
        image_channels=3, nonlinearity="swish")
    options = dict(size, in_channels=6, out_channels=3, fir=fir, embedding=embedding, dropout=0.1,
                   progressive_input="residual")
    return ncsnpp.NCSNpp(config), options


def psld_network(root: Path, size: dict, fir: bool, embedding: str):
    torch.utils.cpp_extension.load = _no_cuda_build
    for name in [m for m in sys.modules if m.split(".")[0] in ("util", "op")]:
        del sys.modules[name]  # CLD-SGM's top-level `util` and `op` packages, if loaded first
    sys.path.insert(0, str(root / "main"))  # for `from util import register_module`
    _package("psld_ref_song_sde", root / "main" / "models" / "score_fn" / "song_sde")
    ncsnpp = importlib.import_module("psld_ref_song_sde.ncsnpp")
    score_fn = SimpleNamespace(
        name="ncsnpp", nf=size["nf"], ch_mult=tuple(size["ch_mult"]), num_res_blocks=size["num_res_blocks"],
        attn_resolutions=tuple(size["attn_resolutions"]), dropout=0.15, resamp_with_conv=True, noise_cond=True,
        fir=fir, fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type="biggan", progressive="none",
        progressive_input="residual", progressive_combine="sum", embedding_type=embedding, init_scale=0.0,
        fourier_scale=16.0, in_ch=6, out_ch=6, scale_by_sigma=False, nonlinearity="swish", act="swish")
    config = SimpleNamespace(model=SimpleNamespace(score_fn=score_fn, name="ncsnpp"),
                             data=SimpleNamespace(image_size=size["image_size"], norm=True),
                             training=SimpleNamespace(continuous=True))
    options = dict(size, in_channels=6, out_channels=6, fir=fir, embedding=embedding, dropout=0.15,
                   progressive_input="residual")
    return ncsnpp.NCSNpp(config), options


def randomise(net: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every tensor of the state_dict redrawn (zero-initialised layers too), scaled to keep activations O(1)."""
    state = {}
    for key, value in net.state_dict().items():
        if value.ndim >= 2:
            fan_in = value[0].numel() if value.ndim > 2 else value.shape[0 if key.endswith(".W") else 1]
            state[key] = torch.randn(value.shape, generator=generator) / fan_in**0.5
        elif key.endswith(".W"):  # Fourier frequencies
            state[key] = torch.randn(value.shape, generator=generator) * 16.0
        else:  # biases, GroupNorm scales and shifts
            state[key] = 0.1 * torch.randn(value.shape, generator=generator) + (1.0 if "GroupNorm" in key
                                                                                 and key.endswith("weight") else 0.0)
    return state


def write_layout(layout: str, root: Path, out: Path, full: bool) -> None:
    generator = torch.Generator().manual_seed(20221 if layout == "cld-sgm" else 20231)
    size = FULL[layout] if full else TINY
    if layout == "cld-sgm":
        net, options = cld_sgm_network(root, size, fir=True, embedding="fourier")
    else:
        net, options = psld_network(root, size, fir=full, embedding="fourier" if full else "positional")
    raw, ema = randomise(net, generator), randomise(net, generator)
    frozen = [k for k, p in net.named_parameters() if not p.requires_grad]  # the Fourier W: never trained,
    ema.update({k: raw[k] for k in frozen})                                 # so the same in raw and EMA
    net.load_state_dict(ema, strict=True)
    net.eval()
    n = 2
    u = torch.randn(n, 6, size["image_size"], size["image_size"], generator=generator)
    t = torch.tensor([0.3, 0.85])[:n]
    with torch.no_grad():
        expected = net(u, t)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "cld-sgm":
        trainable = [k for k, p in net.named_parameters() if p.requires_grad]
        assert [k for k in ema if k in dict(net.named_parameters())] == list(dict(net.named_parameters()))
        checkpoint = {"model": {f"module.{k}": v for k, v in raw.items()},
                      "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": [ema[k] for k in trainable]},
                      "optimizer": {"state": {}, "param_groups": []}, "step": 7}
        path = out / "cld-sgm.pth"
    else:
        checkpoint = {"state_dict": {**{f"score_fn.{k}": v for k, v in raw.items()},
                                     **{f"ema_score_fn.{k}": v for k, v in ema.items()}},
                      "epoch": 0, "global_step": 7, "pytorch-lightning_version": "1.9.0"}
        path = out / "psld.ckpt"
    torch.save(checkpoint, path)
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    torch.save({"u": u, "t": t, "output": expected, "options": options, "layout": layout,
                "reference_tensors": len(ema), "reference_parameters": sum(v.numel() for v in ema.values())},
               out / f"{layout}_expected.pt")
    print(f"{layout}: {path} ({len(ema)} tensors, {sum(v.numel() for v in ema.values())} numbers), output "
          f"{list(expected.shape)} |out| mean {expected.abs().mean():.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cld-sgm", type=Path, required=True, help="checkout of nv-tlabs/CLD-SGM")
    parser.add_argument("--psld", type=Path, required=True, help="checkout of mandt-lab/PSLD")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--full", action="store_true", help="the real CIFAR-10 sizes (hundreds of MB; do not commit)")
    args = parser.parse_args()
    torch.manual_seed(0)
    write_layout("cld-sgm", args.cld_sgm, args.out, args.full)
    write_layout("psld", args.psld, args.out, args.full)


if __name__ == "__main__":
    main()
