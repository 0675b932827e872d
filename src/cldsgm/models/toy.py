"""The CLD toy networks (CLD-SGM's models/mlp.py): an MLP of raw t and a residual MLP of log t."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

__all__ = ["ToyClassifier", "ToyMLP", "ToyResNet"]


class ToyMLP(nn.Module):
    """cat(u, t) -> 128 -> 128 -> 128 -> 128 -> out, SiLU after each hidden layer (50,562 params for CLD 2-D)."""

    def __init__(self, *, in_channels: int, out_channels: int, width: int = 128, depth: int = 4):
        super().__init__()
        dims = [in_channels + 1] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.out = nn.Linear(width, out_channels)

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        """u: [B, in_channels]; t: [B]. Returns [B, out_channels]."""
        h = torch.cat([u, t[:, None].to(u.dtype)], dim=1)
        for layer in self.hidden:
            h = F.silu(layer(h))
        return self.out(h)


class ToyResNet(nn.Module):
    """Residual MLP with log t appended to every layer's input: h <- SiLU(h + Linear([h, log t])).

    Width 64 with 20 residual layers: 84,996 parameters for CLD 2-D (under the paper's 100k).
    """

    def __init__(self, *, in_channels: int, out_channels: int, width: int = 64, depth: int = 20):
        super().__init__()
        self.inp = nn.Linear(in_channels + 1, width)
        self.blocks = nn.ModuleList(nn.Linear(width + 1, width) for _ in range(depth))
        self.out = nn.Linear(width + 1, out_channels)

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        log_t = torch.log(t)[:, None].to(u.dtype)  # t > 0 always (training t >= t_min)
        h = F.silu(self.inp(torch.cat([u, log_t], dim=1)))
        for layer in self.blocks:
            h = F.silu(h + layer(torch.cat([h, log_t], dim=1)))
        return self.out(torch.cat([h, log_t], dim=1))


class ToyClassifier(ToyMLP):
    """A noise-conditioned classifier of 2-D data: cat(u, t) -> 128 x 4 -> num_classes logits, SiLU (ToyMLP's
    body); u is the whole state (x and v for CLD and PSLD)."""

    def __init__(self, *, in_channels: int, num_classes: int, width: int = 128, depth: int = 4):
        super().__init__(in_channels=in_channels, out_channels=num_classes, width=width, depth=depth)
