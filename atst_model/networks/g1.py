"""G1, H&E -> IHC: ATST-Net's "deep pathology mining generator".

A ViT/16 encoder in PathoDuet's shape (:mod:`.pathoduet`); the outputs of
blocks ``depth/4, depth/2, 3 depth/4, depth`` (3, 6, 9, 12 for ViT-B) feed a
CellViT/UNETR-style decoder through skip connections: each tapped level is
brought to its resolution by a stack of 2x deconvolutions, a shallow conv
branch carries full-resolution detail from the image, five ResNet blocks
sit at the bottleneck, and a tanh head gives the IHC image.

Shapes and units: input H&E ``(B, 3, H, W)`` in [-1, 1]; output fake IHC
``(B, 3, H, W)`` in [-1, 1]. The ViT sees ``(x + 1) / 2`` because PathoDuet
was trained on un-normalised [0, 1] RGB.

Input modes (``G1Config.mode``):

- ``"tiles224"`` (the paper): the crop is covered by overlapping
  ``img_size`` tiles (9 per 512 crop at offsets 0, 144, 288), all tiles run
  as one batch, the results are blended (:mod:`.tiling`). Any side
  >= ``img_size``.
- ``"native"``: the ViT runs at the crop's size with its position
  embedding interpolated. Sides multiples of 16.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .layers import NORMS, Norm, ResBlock, conv_block, deconv_block
from .pathoduet import PATCH_SIZE, PATHODUET_SHAPE, WEIGHTS_HELP, EncoderWeightsWarning, create_encoder, load_pathoduet
from .tiling import blend_tiles, crop_tile_grid, extract_tiles

MODES = ("tiles224", "native")


@dataclass(frozen=True)
class G1Config:
    """Architecture of G1.

    Attributes
    ----------
    mode : "tiles224" (overlapping ``img_size`` tiles, blended) or "native" (ViT at the crop's size).
    embed_dim, depth, num_heads : the ViT/16 encoder (768, 12, 12 = ViT-B, PathoDuet's shape).
    img_size : the ViT's own input side: its position-embedding grid, and the tile side in "tiles224".
    tile_stride : largest distance between neighbouring tiles (144: the paper's 9 tiles per 512 crop).
    decoder_channels : decoder widths at full, 1/2, 1/4 and 1/8 resolution (CellViT: 64, 128, 256, 512).
    bottleneck_blocks : ResNet blocks at the bottleneck (the paper: 5).
    norm : normalisation in the decoder (see :data:`.layers.NORMS`).
    in_channels, out_channels : image channels in and out.
    freeze_pos_embed : keep the fixed sin-cos position embedding fixed (as PathoDuet trained it).
    drop_path_rate : stochastic depth in the ViT.
    encoder_weights : path to PathoDuet's checkpoint_HE.pth; None starts from random weights (with a warning).
    """

    mode: Literal["tiles224", "native"] = "tiles224"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    img_size: int = 224
    tile_stride: int = 144
    decoder_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    bottleneck_blocks: int = 5
    norm: Norm = "batch"
    in_channels: int = 3
    out_channels: int = 3
    freeze_pos_embed: bool = True
    drop_path_rate: float = 0.0
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.decoder_channels, list):  # a config read back from JSON
            object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        checks = {
            "mode": self.mode in MODES,
            "embed_dim": self.embed_dim > 0 and self.embed_dim % 4 == 0 and self.embed_dim % max(self.num_heads, 1) == 0,
            "depth": self.depth >= 4 and self.depth % 4 == 0,
            "num_heads": self.num_heads >= 1,
            "img_size": self.img_size >= PATCH_SIZE and self.img_size % PATCH_SIZE == 0,
            "tile_stride": 0 < self.tile_stride <= self.img_size,
            "decoder_channels": len(self.decoder_channels) == 4 and all(
                isinstance(c, int) and c > 0 for c in self.decoder_channels),
            "bottleneck_blocks": 0 <= self.bottleneck_blocks <= 32,
            "norm": self.norm in NORMS,
            "in_channels": self.in_channels >= 1, "out_channels": self.out_channels >= 1,
            "drop_path_rate": 0 <= self.drop_path_rate < 1,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid G1 config: {', '.join(bad)} (embed_dim divisible by 4 and num_heads; depth a "
                             f"multiple of 4; img_size a multiple of {PATCH_SIZE}; 0 < tile_stride <= img_size; "
                             f"modes {', '.join(MODES)}; norms {', '.join(NORMS)})")

    @property
    def taps(self) -> tuple[int, ...]:
        """0-based indices of the tapped ViT blocks (2, 5, 8, 11 for depth 12)."""
        return tuple(self.depth * k // 4 - 1 for k in (1, 2, 3, 4))

    @property
    def pathoduet_shaped(self) -> bool:
        """Whether PathoDuet's weights fit this encoder."""
        return (self.embed_dim, self.depth, self.num_heads) == tuple(PATHODUET_SHAPE[k] for k in
                                                                     ("embed_dim", "depth", "num_heads"))

    def build(self) -> "G1":
        return G1(self)


class UnetrDecoder(nn.Module):
    """CellViT-style decoder: four ViT levels at 1/16 + the image -> ``(B, out, H, W)`` in [-1, 1]."""

    def __init__(self, config: G1Config) -> None:
        super().__init__()
        c0, c1, c2, c3 = config.decoder_channels
        e, n = config.embed_dim, config.norm
        self.stem = nn.Sequential(conv_block(config.in_channels, c0 // 2, n), conv_block(c0 // 2, c0, n))  # 1/1
        # each tapped level climbs back to its own resolution: shallower blocks feed finer levels
        self.skip1 = nn.Sequential(deconv_block(e, c3, n), deconv_block(c3, c2, n), deconv_block(c2, c1, n))  # 1/2
        self.skip2 = nn.Sequential(deconv_block(e, c3, n), deconv_block(c3, c2, n))  # 1/4
        self.skip3 = deconv_block(e, c3, n)  # 1/8
        self.bottleneck = nn.Sequential(conv_block(e, c3, n, kernel=1),
                                        *[ResBlock(c3, n) for _ in range(config.bottleneck_blocks)],
                                        nn.ConvTranspose2d(c3, c3, 2, stride=2))  # 1/16 -> 1/8
        self.up3 = self._merge(2 * c3, c3, c2, n)  # 1/8 -> 1/4
        self.up2 = self._merge(2 * c2, c2, c1, n)  # 1/4 -> 1/2
        self.up1 = self._merge(2 * c1, c1, c0, n)  # 1/2 -> 1/1
        self.head = nn.Sequential(conv_block(2 * c0, c0, n), conv_block(c0, c0, n),
                                  nn.Conv2d(c0, config.out_channels, 1), nn.Tanh())

    @staticmethod
    def _merge(c_in: int, c_mid: int, c_out: int, norm: Norm) -> nn.Sequential:
        return nn.Sequential(conv_block(c_in, c_mid, norm), conv_block(c_mid, c_mid, norm),
                             nn.ConvTranspose2d(c_mid, c_out, 2, stride=2))

    def forward(self, image: torch.Tensor, levels: list[torch.Tensor]) -> torch.Tensor:
        z1, z2, z3, z4 = levels  # each (B, E, H/16, W/16)
        x = self.up3(torch.cat([self.bottleneck(z4), self.skip3(z3)], dim=1))
        x = self.up2(torch.cat([x, self.skip2(z2)], dim=1))
        x = self.up1(torch.cat([x, self.skip1(z1)], dim=1))
        return self.head(torch.cat([x, self.stem(image)], dim=1))


class G1(nn.Module):
    """ATST-Net's G1 (H&E -> IHC); see the module docstring for shapes, ranges and modes."""

    def __init__(self, config: G1Config = G1Config()) -> None:
        super().__init__()
        self.config = config
        self.encoder = create_encoder(config.embed_dim, config.depth, config.num_heads, config.img_size,
                                      dynamic_img_size=config.mode == "native",
                                      freeze_pos_embed=config.freeze_pos_embed, drop_path_rate=config.drop_path_rate)
        self.decoder = UnetrDecoder(config)
        if config.encoder_weights is not None:
            load_pathoduet(self.encoder, config.encoder_weights)
        elif config.pathoduet_shaped:
            warnings.warn("G1: no encoder weights given, the ViT encoder starts from random weights (the paper "
                          f"starts from PathoDuet). {WEIGHTS_HELP}. Ignore this when restoring a trained G1.",
                          EncoderWeightsWarning, stacklevel=3)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Tapped ViT levels: four ``(B, E, H/16, W/16)`` maps (the last after the ViT's final norm)."""
        b, _, h, w = x.shape
        levels = self.encoder.forward_intermediates((x + 1) * 0.5, indices=list(self.config.taps),
                                                    output_fmt="NLC", intermediates_only=True)
        levels[-1] = self.encoder.norm(levels[-1])  # the ViT's feature; also keeps norm.* in use (DDP)
        gh, gw = h // PATCH_SIZE, w // PATCH_SIZE
        return [z.transpose(1, 2).reshape(b, -1, gh, gw) for z in levels]

    def forward_tile(self, x: torch.Tensor) -> torch.Tensor:
        """The network on ViT-sized inputs ``(N, 3, h, w)`` in [-1, 1] -> ``(N, 3, h, w)`` in [-1, 1].

        In "tiles224" mode ``h = w = img_size``; in "native" mode multiples of 16.
        """
        return self.decoder(x, self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """H&E ``(B, 3, H, W)`` in [-1, 1] -> fake IHC ``(B, 3, H, W)`` in [-1, 1]."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"G1 expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.config.mode == "native":
            if h % PATCH_SIZE or w % PATCH_SIZE:
                raise ValueError(f"G1 (native mode) needs sides that are multiples of {PATCH_SIZE}, got {h}x{w}")
            return self.forward_tile(x)
        t = self.config.img_size
        if h < t or w < t:
            raise ValueError(f"G1 (tiles224 mode) needs sides >= its {t} px tile, got {h}x{w}")
        grid = crop_tile_grid(h, w, t, self.config.tile_stride)
        return blend_tiles(self.forward_tile(extract_tiles(x, grid)), grid)
