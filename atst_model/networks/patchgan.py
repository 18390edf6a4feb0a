"""D_IHC and D_HE: the 70x70 PatchGAN of pytorch-CycleGAN-and-pix2pix (``NLayerDiscriminator``).

C64-C128-C256-C512 (4x4 convolutions, stride 2, 2, 2, 1; no norm on the
first), InstanceNorm, LeakyReLU 0.2, then a 4x4 convolution to one channel:
a map of real/fake logits, each seeing a 70x70 patch of the input (for
``n_layers=3``). Used with the LSGAN loss, so no sigmoid.

Shapes: input ``(B, 3, H, W)`` in [-1, 1]; output ``(B, 1, H', W')`` with
``H' = H / 2**n_layers - 2`` for sides divisible by ``2**n_layers``
(62x62 for a 512 crop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import NORMS, Norm, make_norm


@dataclass(frozen=True)
class PatchGanConfig:
    """Architecture of a PatchGAN discriminator.

    Attributes
    ----------
    base_channels : width of the first layer (64), doubled per layer up to 8x.
    n_layers : stride-2 layers after the first conv (3 gives the 70x70 receptive field).
    norm : normalisation (the reference: "instance").
    in_channels : image channels.
    """

    base_channels: int = 64
    n_layers: int = 3
    norm: Norm = "instance"
    in_channels: int = 3

    def __post_init__(self) -> None:
        checks = {"base_channels": 1 <= self.base_channels <= 1024, "n_layers": 1 <= self.n_layers <= 6,
                  "norm": self.norm in NORMS, "in_channels": self.in_channels >= 1}
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid PatchGAN config: {', '.join(bad)} (norms: {', '.join(NORMS)})")

    @property
    def receptive_field(self) -> int:
        """Side in px of the input patch that one output logit sees (70 for ``n_layers=3``)."""
        rf = 1
        for stride in reversed([2] * self.n_layers + [1, 1]):  # walk back from the output through 4x4 kernels
            rf = (rf - 1) * stride + 4
        return rf

    def build(self) -> "PatchGan":
        return PatchGan(self)


class PatchGan(nn.Module):
    """PatchGAN discriminator; see the module docstring for shapes."""

    def __init__(self, config: PatchGanConfig = PatchGanConfig()) -> None:
        super().__init__()
        self.config = config
        c, n = config.base_channels, config.norm
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, c, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for i in range(1, config.n_layers + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 2 if i < config.n_layers else 1  # the last widening conv keeps the resolution
            layers += [nn.Conv2d(c * prev, c * mult, 4, stride=stride, padding=1, bias=n == "none"),
                       make_norm(n, c * mult), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(c * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` in [-1, 1] -> patch logits ``(B, 1, H', W')``."""
        return self.model(x)
