"""Small building blocks shared by G1, G2 and the PatchGAN: norm factory, conv blocks, residual blocks.

All blocks take and return ``(B, C, H, W)`` feature maps (channels-last
memory format works unchanged). Convolutions carry a bias only when no norm
follows them: a norm removes a per-channel constant anyway.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

#: Normalisations a config may name. "instance" is the CycleGAN default (affine-free, no running
#: statistics); "batch" is CellViT's; "group" is batch-size independent and keeps its parameters.
Norm = Literal["batch", "instance", "group", "none"]
NORMS: tuple[str, ...] = ("batch", "instance", "group", "none")


def make_norm(kind: Norm, channels: int) -> nn.Module:
    """A 2-D normalisation layer of the named ``kind`` for ``channels`` feature maps."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


def conv_block(c_in: int, c_out: int, norm: Norm, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (same padding) -> norm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm == "none"),
        make_norm(norm, c_out), nn.ReLU(inplace=True),
    )


def deconv_block(c_in: int, c_out: int, norm: Norm) -> nn.Sequential:
    """CellViT's ``Deconv2DBlock``: 2x2 transposed conv (x2 up-sampling), then conv 3x3 -> norm -> ReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 2, stride=2), conv_block(c_out, c_out, norm))


class ResBlock(nn.Module):
    """Residual block ``x + conv-norm-ReLU-conv-norm(x)`` (the CycleGAN ResNet generator's block)."""

    def __init__(self, channels: int, norm: Norm) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_block(channels, channels, norm),
            nn.Conv2d(channels, channels, 3, padding=1, bias=norm == "none"), make_norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
