"""NCSN++ (Song et al. 2021, continuous time) as CLD-SGM trains it on CIFAR-10 (CLD-SGM's CIFAR-10 config).

BigGAN residual blocks, DDPM attention at the listed resolutions, FIR resampling, skip rescaling, a residual
input pyramid and a Gaussian-Fourier embedding of log t (or a positional embedding of raw t). The network
maps a state [B, in_channels, H, W] and times [B] to [B, out_channels, H, W]; it knows nothing of SDEs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from cldsgm.models.layers import (
    AttnBlock,
    FIRConvDown,
    GaussianFourierProjection,
    PadConvDown,
    ResBlockBigGAN,
    conv,
    group_norm,
    linear,
    positional_embedding,
)

__all__ = ["NCSNpp", "NCSNppClassifier"]


class NCSNpp(nn.Module):
    """U-Net score network.

    Args:
        in_channels, out_channels: 6 and 3 for CLD on RGB (x and v in, eps_v out); 6 and 6 for PSLD.
        image_size: input side length; nf: base width; ch_mult: width multiplier per resolution.
        num_res_blocks: residual blocks per resolution; attn_resolutions: side lengths with attention.
        dropout, fir, fir_kernel, skip_rescale, init_scale: as in Score-SDE.
        progressive_input: 'residual' (an input pyramid of FIR-downsampling convs) or 'none'.
        embedding: 'fourier' (of log t, scale fourier_scale) or 'positional' (of raw t).
    """

    repeated_blocks = (ResBlockBigGAN, AttnBlock)  # compiled one by one (cldsgm.models.fast.compile_blocks)
    fp32_modules = ("fourier", "temb")  # the time embedding stays float32 when weights are cast for sampling

    def __init__(self, *, in_channels: int, out_channels: int, image_size: int, nf: int = 128,
                 ch_mult=(1, 2, 2, 2), num_res_blocks: int = 8, attn_resolutions=(16,), dropout: float = 0.1,
                 fir: bool = True, fir_kernel=(1, 3, 3, 1), skip_rescale: bool = True, init_scale: float = 0.0,
                 progressive_input: str = "residual", embedding: str = "fourier", fourier_scale: float = 16.0):
        super().__init__()
        if embedding not in ("fourier", "positional"):
            raise ValueError(f"embedding must be 'fourier' or 'positional', got {embedding!r}")
        if progressive_input not in ("residual", "none"):
            raise ValueError(f"progressive_input must be 'residual' or 'none', got {progressive_input!r}")
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(ch_mult) - 1} (ch_mult {ch_mult})")
        self.embedding, self.nf, self.skip_rescale = embedding, nf, skip_rescale
        self.progressive_input, self.fir_kernel = progressive_input, tuple(fir_kernel)
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        temb_dim = 4 * nf
        if embedding == "fourier":
            self.fourier = GaussianFourierProjection(nf, fourier_scale)
        self.temb = nn.Sequential(linear(2 * nf if embedding == "fourier" else nf, temb_dim), nn.SiLU(),
                                  linear(temb_dim, temb_dim))

        def block(i, o=None, **kw):
            return ResBlockBigGAN(i, o, temb_dim=temb_dim, dropout=dropout, fir=fir, taps=fir_kernel,
                                  skip_rescale=skip_rescale, init_scale=init_scale, **kw)

        def attn(c):
            return AttnBlock(c, skip_rescale=skip_rescale, init_scale=init_scale)

        self.conv_in = conv(in_channels, nf)
        self.down, self.pyramid = nn.ModuleList(), nn.ModuleList()
        skips, ch, pyramid_ch = [nf], nf, in_channels
        for level in range(self.num_resolutions):
            size = image_size // 2**level
            stage = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.append(block(ch, nf * ch_mult[level]))
                ch = nf * ch_mult[level]
                if size in self.attn_resolutions:
                    stage.append(attn(ch))
                skips.append(ch)
            if level != self.num_resolutions - 1:
                stage.append(block(ch, down=True))
                if progressive_input == "residual":
                    self.pyramid.append(FIRConvDown(pyramid_ch, ch, fir_kernel) if fir
                                        else PadConvDown(pyramid_ch, ch))
                    pyramid_ch = ch
                skips.append(ch)
            self.down.append(stage)
        self.mid = nn.ModuleList([block(ch), attn(ch), block(ch)])
        self.up = nn.ModuleList()
        for level in reversed(range(self.num_resolutions)):
            size = image_size // 2**level
            stage = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.append(block(ch + skips.pop(), nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if size in self.attn_resolutions:
                stage.append(attn(ch))
            if level != 0:
                stage.append(block(ch, up=True))
            self.up.append(stage)
        assert not skips
        self.norm_out = group_norm(ch)
        self.conv_out = conv(ch, out_channels, init_scale=init_scale)

    def _time_embedding(self, t: Tensor) -> Tensor:
        # in fp32 even under autocast, as CLD-SGM: sin/cos of 2 pi W log t with |W| ~ 16 * 3 lose all precision
        # in bf16 (8 bits of mantissa), and nearby times would get the same embedding
        with torch.autocast(t.device.type, enabled=False):
            t = t.float()
            if self.embedding == "fourier":
                feats = self.fourier(torch.log(t))  # the reference embeds log t: t must stay > 0
            else:
                feats = positional_embedding(t, self.nf)
            return self.temb(feats)

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        """u: [B, in_channels, H, W]; t: [B] forward times in (0, 1]. Returns [B, out_channels, H, W]."""
        temb = self._time_embedding(t).to(u.dtype)  # float32 -> the weights' dtype when they are cast
        h, hs = self._encode(u, temb)
        for stage in self.up:
            for layer in stage:
                if isinstance(layer, AttnBlock):
                    h = layer(h)
                elif layer.up:
                    h = layer(h, temb)
                else:
                    h = layer(torch.cat([h, hs.pop()], dim=1), temb)
        assert not hs
        return self.conv_out(F.silu(self.norm_out(h)))

    def _encode(self, u: Tensor, temb: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The down path and the middle: (h at the lowest resolution, the skips for the up path)."""
        pyramid = u
        hs = [self.conv_in(u)]
        for level, stage in enumerate(self.down):
            h = hs[-1]
            for layer in stage:
                if isinstance(layer, AttnBlock):
                    h = layer(h)
                    hs[-1] = h
                    continue
                h = layer(h, temb)
                hs.append(h)
                if layer.down and self.progressive_input == "residual":
                    pyramid = self.pyramid[level](pyramid)
                    h = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
                    pyramid = h
                    hs[-1] = h
        h = self.mid[2](self.mid[1](self.mid[0](hs[-1], temb)), temb)
        return h, hs


class NCSNppClassifier(NCSNpp):
    """The encoder half of NCSN++ (down path and middle, as the PSLD reference's `ncsnpp_clf`) with a head:
    GroupNorm, SiLU, the mean over pixels and a linear map to class logits. Takes the whole state (x and v: 2C
    channels) and t; returns [B, num_classes]. Options as NCSNpp's, less out_channels."""

    def __init__(self, *, num_classes: int, **options):
        super().__init__(out_channels=1, **options)
        del self.up, self.norm_out, self.conv_out  # the decoder half is not part of a classifier
        width = self.mid[0].Conv_1.out_channels
        self.norm_head = group_norm(width)
        self.head = linear(width, num_classes)

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        """u: [B, in_channels, H, W]; t: [B]. Returns logits [B, num_classes]."""
        h, _ = self._encode(u, self._time_embedding(t).to(u.dtype))
        return self.head(F.silu(self.norm_head(h)).mean(dim=(2, 3)))
