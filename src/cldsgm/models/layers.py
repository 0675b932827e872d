"""Building blocks of NCSN++ (Song et al. 2021) in plain PyTorch: FIR resampling, BigGAN residual blocks,
DDPM attention and time embeddings. Layer shapes follow the Score-SDE model that CLD-SGM trains."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = ["AttnBlock", "FIRConvDown", "GaussianFourierProjection", "GroupNorm", "PadConvDown", "ResBlockBigGAN",
           "fir_downsample", "fir_upsample", "positional_embedding"]


def variance_scaling_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """Score-SDE's default_init: uniform fan-avg variance scaling; scale 0 means 1e-10 (near-zero output)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv(in_ch: int, out_ch: int, kernel: int = 3, *, init_scale: float = 1.0, stride: int = 1,
         padding: int | None = None) -> nn.Conv2d:
    layer = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2 if padding is None else padding)
    variance_scaling_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    variance_scaling_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that, when `in_compute_dtype` is set and autocast is on, normalises in the autocast dtype
    (cldsgm.models.fast.set_norm_dtype) instead of autocast's float32; otherwise nn.GroupNorm exactly."""

    in_compute_dtype = False

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if not (self.in_compute_dtype and torch.is_autocast_enabled(device)):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):  # the kernel accumulates its mean and variance in float32
            return F.group_norm(x.to(dtype), self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)


def group_norm(channels: int) -> GroupNorm:
    return GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


def _fir_kernel(taps, gain: float = 1.0) -> Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum() * gain


def _upfirdn(x: Tensor, kernel: Tensor, up: int, down: int, pad: tuple[int, int]) -> Tensor:
    """Zero-insertion upsampling by `up`, padding, depthwise FIR filtering, keeping every `down`-th pixel."""
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(b, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def fir_upsample(x: Tensor, taps=(1, 3, 3, 1)) -> Tensor:
    """2x upsampling with the FIR filter `taps` (upsample_2d of StyleGAN2 / Score-SDE)."""
    k = _fir_kernel(taps, gain=4.0).to(x.device)
    p = k.shape[0] - 2
    return _upfirdn(x, k, up=2, down=1, pad=((p + 1) // 2 + 1, p // 2))


def fir_downsample(x: Tensor, taps=(1, 3, 3, 1)) -> Tensor:
    """2x downsampling with the FIR filter `taps` (downsample_2d)."""
    k = _fir_kernel(taps).to(x.device)
    p = k.shape[0] - 2
    return _upfirdn(x, k, up=1, down=2, pad=((p + 1) // 2, p // 2))


class FIRConvDown(nn.Module):
    """FIR blur then a strided 3x3 convolution (Score-SDE's Conv2d(down=True) of the input pyramid)."""

    def __init__(self, in_ch: int, out_ch: int, taps=(1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(variance_scaling_(torch.empty(out_ch, in_ch, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.taps = tuple(taps)

    def forward(self, x: Tensor) -> Tensor:
        k = _fir_kernel(self.taps).to(x.device)
        p = (k.shape[0] - 2) + 2  # filter taps beyond the factor plus the conv's reach
        x = _upfirdn(x, k, up=1, down=1, pad=((p + 1) // 2, p // 2))
        return F.conv2d(x, self.weight, stride=2) + self.bias[None, :, None, None]


class PadConvDown(nn.Conv2d):
    """3x3 convolution with stride 2 after padding right and bottom by one pixel (Score-SDE's non-FIR
    `Downsample(with_conv=True)`); a symmetric padding of 1 would shift the sampling grid by one pixel."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(in_ch, out_ch, 3, stride=2, padding=0)
        variance_scaling_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (0, 1, 0, 1)))


class GaussianFourierProjection(nn.Module):
    """[sin(2 pi W s), cos(2 pi W s)] with frozen W ~ N(0, scale^2): 2 * size features of a scalar s."""

    def __init__(self, size: int, scale: float = 16.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(size) * scale, requires_grad=False)

    def forward(self, s: Tensor) -> Tensor:
        proj = s[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def positional_embedding(t: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """DDPM sinusoidal embedding of the raw t (no x999 scaling, as CLD/PSLD), [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_positions) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlockBigGAN(nn.Module):
    """GroupNorm-SiLU-(up/down)-conv, + time embedding, GroupNorm-SiLU-dropout-conv; skip rescaled by 1/sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int, dropout: float, up: bool = False,
                 down: bool = False, fir: bool = True, taps=(1, 3, 3, 1), skip_rescale: bool = True,
                 init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv(in_ch, out_ch)
        self.Dense_0 = linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv(out_ch, out_ch, init_scale=init_scale)
        self.Conv_2 = conv(in_ch, out_ch, 1) if (in_ch != out_ch or up or down) else None
        self.up, self.down, self.fir, self.taps, self.skip_rescale = up, down, fir, tuple(taps), skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return fir_upsample(x, self.taps) if self.fir else F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return fir_downsample(x, self.taps) if self.fir else F.avg_pool2d(x, 2)
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self._resample(F.silu(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h) + self.Dense_0(F.silu(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(F.silu(self.GroupNorm_1(h))))
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nn.Module):
    """DDPM self-attention over pixels with 1x1 projections (NIN layers), residual rescaled by 1/sqrt(2)."""

    def __init__(self, channels: int, *, skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        # q, k, v at init scale 0.1 as the reference's NIN default; only the output projection takes init_scale
        self.NIN_0, self.NIN_1, self.NIN_2 = (conv(channels, channels, 1, init_scale=0.1) for _ in range(3))
        self.NIN_3 = conv(channels, channels, 1, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.GroupNorm_0(x)
        q, k, v = (layer(normed).flatten(2).transpose(1, 2) for layer in (self.NIN_0, self.NIN_1, self.NIN_2))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v over all pixel pairs
        out = self.NIN_3(out.transpose(1, 2).reshape(b, c, h, w))
        return (x + out) / math.sqrt(2.0) if self.skip_rescale else x + out
