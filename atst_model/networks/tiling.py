"""Overlapping square tiles over a crop, and their blended re-assembly (pure tensor functions).

ATST-Net's public code covers each 512 crop with nine 224 tiles at offsets
{0, 144, 288} per axis, runs them one at a time and stitches them by
overwriting. Here the tiles are cut in one gather, run as one batch by the
caller, and put back as a weighted mean: each tile's weight falls off
towards its edges (where the tile's context is cut), the weights of all
tiles covering a pixel sum to 1, so no seam is drawn and an identity
network gives its input back.

Shapes: crops ``(B, C, H, W)``; tiles ``(B * n_tiles, C, T, T)``, ordered
batch-major, then tile row, then tile column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one crop size lie: top-left offsets per axis, tile side ``tile``."""

    height: int
    width: int
    tile: int
    offsets_y: tuple[int, ...]
    offsets_x: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.offsets_y) * len(self.offsets_x)


def tile_offsets(length: int, tile: int, max_stride: int) -> tuple[int, ...]:
    """Evenly spaced offsets of ``tile``-long windows covering ``[0, length)``, no gap above ``max_stride``.

    The fewest tiles that keep every stride <= ``max_stride``; the first tile
    starts at 0 and the last ends at ``length``. 512, 224, 144 gives the
    paper's (0, 144, 288).
    """
    if length < tile:
        raise ValueError(f"a side of {length} px is smaller than the {tile} px tile")
    if not 0 < max_stride <= tile:
        raise ValueError(f"max_stride must be in (0, tile={tile}], got {max_stride}")
    span = length - tile
    if span == 0:
        return (0,)
    n = -(-span // max_stride) + 1  # ceil division
    return tuple(i * span // (n - 1) for i in range(n))


def crop_tile_grid(height: int, width: int, tile: int, max_stride: int) -> TileGrid:
    """The :class:`TileGrid` of a ``height`` x ``width`` crop: tiles inside it, at :func:`tile_offsets`.

    Not the inference tiling (:func:`atst_model.infer.stitch.tile_grid`: read windows
    reaching into a reflected margin, raised-cosine blend).
    """
    return TileGrid(height, width, tile, tile_offsets(height, tile, max_stride), tile_offsets(width, tile, max_stride))


def blend_window(tile: int, device=None) -> torch.Tensor:
    """1-D triangular window ``(tile,)``, 1 at both ends, ``ceil(tile / 2)`` in the middle.

    Never zero: a pixel that only one tile sees (the crop border) keeps that
    tile's value after normalisation, whatever the weight.
    """
    u = torch.arange(tile, device=device, dtype=torch.float32)
    return torch.minimum(u + 1, tile - u)


def _axis_weights(length: int, offsets: tuple[int, ...], tile: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel indices ``(n, T)`` of each tile along one axis and its normalised 1-D weights ``(n, T)``."""
    idx = torch.tensor(offsets, device=device).unsqueeze(1) + torch.arange(tile, device=device)
    w = blend_window(tile, device).expand(len(offsets), tile)
    total = torch.zeros(length, device=device).index_add_(0, idx.flatten(), w.flatten())
    return idx, w / total[idx]


def tile_weights(grid: TileGrid, device=None) -> torch.Tensor:
    """Normalised blend weights ``(n_tiles, T, T)``: placed on the crop, they sum to 1 at every pixel.

    The window is separable and the tiles form a grid, so the 2-D weight sum
    is the outer product of the two 1-D sums and the normalisation separates too.
    """
    _, wy = _axis_weights(grid.height, grid.offsets_y, grid.tile, device)
    _, wx = _axis_weights(grid.width, grid.offsets_x, grid.tile, device)
    return (wy[:, None, :, None] * wx[None, :, None, :]).reshape(grid.n_tiles, grid.tile, grid.tile)


def extract_tiles(x: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Cut ``(B, C, H, W)`` into ``(B * n_tiles, C, T, T)`` in one gather (no loop over tiles)."""
    b, c, h, w = x.shape
    if (h, w) != (grid.height, grid.width):
        raise ValueError(f"crop is {h}x{w}, the tile grid was made for {grid.height}x{grid.width}")
    t = grid.tile
    iy = torch.tensor(grid.offsets_y, device=x.device).unsqueeze(1) + torch.arange(t, device=x.device)
    ix = torch.tensor(grid.offsets_x, device=x.device).unsqueeze(1) + torch.arange(t, device=x.device)
    tiles = x[:, :, iy[:, None, :, None], ix[None, :, None, :]]  # (B, C, ny, nx, T, T)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b * grid.n_tiles, c, t, t)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        tiles = tiles.contiguous(memory_format=torch.channels_last)
    return tiles


def blend_tiles(tiles: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Weighted mean of overlapping tiles ``(B * n_tiles, C, T, T)`` -> crop ``(B, C, H, W)``.

    Accumulates in float32 (one ``index_add_``, deterministic on CUDA under
    ``torch.use_deterministic_algorithms``) and returns the tiles' dtype.
    """
    n, c, t, _ = tiles.shape
    if n % grid.n_tiles or t != grid.tile:
        raise ValueError(f"got {n} tiles of {t} px, the grid has {grid.n_tiles} tiles of {grid.tile} px per crop")
    b, ny, nx = n // grid.n_tiles, len(grid.offsets_y), len(grid.offsets_x)
    iy, wy = _axis_weights(grid.height, grid.offsets_y, t, tiles.device)
    ix, wx = _axis_weights(grid.width, grid.offsets_x, t, tiles.device)
    weighted = tiles.float().reshape(b, ny, nx, c, t, t) * (wy[:, None, None, :, None] * wx[None, :, None, None, :])
    flat = (iy[:, None, :, None] * grid.width + ix[None, :, None, :]).flatten()  # (ny*nx*T*T,)
    src = weighted.permute(0, 3, 1, 2, 4, 5).reshape(b, c, -1)
    out = torch.zeros(b, c, grid.height * grid.width, device=tiles.device).index_add_(2, flat, src)
    return out.view(b, c, grid.height, grid.width).to(tiles.dtype)
