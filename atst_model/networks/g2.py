"""G2, IHC -> H&E: a convolutional ResNet-U-Net (ATST-Net's second CycleGAN generator).

Encoder: a 7x7 stem, then ``n_down`` stride-2 convolutions, residual blocks
at every level; ``bottleneck_blocks`` residual blocks at the coarsest level;
decoder: nearest-neighbour up-sampling + 3x3 conv (no checkerboard, and
deterministic on CUDA unlike bilinear's backward), concatenated skip,
residual blocks; 7x7 head, tanh.

Shapes and units: input IHC ``(B, 3, H, W)`` in [-1, 1], ``H`` and ``W``
multiples of ``2 ** n_down``; output H&E ``(B, 3, H, W)`` in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import NORMS, Norm, ResBlock, conv_block


@dataclass(frozen=True)
class G2Config:
    """Architecture of G2.

    Attributes
    ----------
    base_channels : width at full resolution, doubled per level up to ``max_channels``.
    n_down : number of 2x down-samplings (inputs: sides multiples of ``2 ** n_down``).
    blocks_per_level : residual blocks at each encoder and decoder level.
    bottleneck_blocks : residual blocks at the coarsest level.
    norm : normalisation (CycleGAN's default: "instance").
    in_channels, out_channels : image channels in and out.
    """

    base_channels: int = 64
    max_channels: int = 256
    n_down: int = 3
    blocks_per_level: int = 1
    bottleneck_blocks: int = 6
    norm: Norm = "instance"
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        checks = {
            "base_channels": 1 <= self.base_channels <= 1024, "max_channels": self.max_channels >= self.base_channels,
            "n_down": 1 <= self.n_down <= 6, "blocks_per_level": 0 <= self.blocks_per_level <= 16,
            "bottleneck_blocks": 0 <= self.bottleneck_blocks <= 32, "norm": self.norm in NORMS,
            "in_channels": self.in_channels >= 1, "out_channels": self.out_channels >= 1,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid G2 config: {', '.join(bad)} (norms: {', '.join(NORMS)})")

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.n_down

    def build(self) -> "G2":
        return G2(self)


class G2(nn.Module):
    """ResNet-U-Net generator; see the module docstring for shapes and ranges."""

    def __init__(self, config: G2Config = G2Config()) -> None:
        super().__init__()
        self.config = config
        n, k = config.norm, config.blocks_per_level
        ch = [min(config.base_channels * 2**i, config.max_channels) for i in range(config.n_down + 1)]
        self.stem = nn.Sequential(conv_block(config.in_channels, ch[0], n, kernel=7),
                                  *[ResBlock(ch[0], n) for _ in range(k)])
        self.down = nn.ModuleList([
            nn.Sequential(conv_block(ch[i], ch[i + 1], n, stride=2), *[ResBlock(ch[i + 1], n) for _ in range(k)])
            for i in range(config.n_down)])
        self.bottleneck = nn.Sequential(*[ResBlock(ch[-1], n) for _ in range(config.bottleneck_blocks)])
        self.up = nn.ModuleList([conv_block(ch[i + 1], ch[i], n) for i in range(config.n_down)])
        self.merge = nn.ModuleList([
            nn.Sequential(conv_block(2 * ch[i], ch[i], n), *[ResBlock(ch[i], n) for _ in range(k)])
            for i in range(config.n_down)])
        self.head = nn.Sequential(nn.Conv2d(ch[0], config.out_channels, 7, padding=3), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """IHC ``(B, 3, H, W)`` in [-1, 1] -> fake H&E ``(B, 3, H, W)`` in [-1, 1]."""
        m = self.config.multiple
        if x.ndim != 4 or x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"G2 expects (B, C, H, W) with sides multiples of {m}, got {tuple(x.shape)}")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        x = self.bottleneck(skips.pop())
        for i in reversed(range(self.config.n_down)):
            x = self.up[i](F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = self.merge[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)
