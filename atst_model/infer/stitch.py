"""Seamless tiling of large images: read windows, blend weights and a weighted canvas (pure numpy).

A network's output is worst at a tile's edges, where its context is cut.
Tiles are therefore read ``overlap`` px larger on every side than the part
they mostly write: windows of side ``tile`` step by ``stride = tile - overlap``
and start ``overlap`` px before the image, so the first and last ramps fall
in the reflected margin. Each window's output is weighted by a separable
raised cosine that rises over the first ``overlap`` px and falls over the
last; adjacent ramps sum to exactly 1, so the blend is a partition of unity
inside the image and constant offsets between tiles become smooth ramps
instead of seams. Weights never reach 0, and the canvas divides by the
weight sum anyway, so an identity network returns its input exactly.

Coordinates are image pixels ``(y, x)``; windows may start at negative
coordinates or end past the image, and are filled by mirror reflection.
"""

from __future__ import annotations

import math

import numpy as np


def _check(tile: int, overlap: int) -> None:
    if tile < 1 or overlap < 0 or 2 * overlap > tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap <= tile / 2, got tile {tile}, overlap {overlap}")


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis: ``-overlap + k * (tile - overlap)`` for k = 0..n-1.

    ``n = ceil((length + overlap) / stride)``: the last window's falling ramp
    starts at or past ``length``, so every image pixel lies in some window's
    full-weight part or in a ramp pair summing to 1.
    """
    _check(tile, overlap)
    if length < 1:
        raise ValueError(f"an image side must be >= 1 px, got {length}")
    stride = tile - overlap
    n = max(1, math.ceil((length + overlap) / stride))
    return [-overlap + k * stride for k in range(n)]


def tile_grid(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y0, x0)`` of the ``tile`` x ``tile`` read windows covering an ``h`` x ``w`` image.

    Row-major order. Corners may be negative (reflected margin); see the module docstring.
    """
    return [(y, x) for y in axis_starts(h, tile, overlap) for x in axis_starts(w, tile, overlap)]


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """Separable blend weights ``(tile, tile)`` float32, in (0, 1], 1 away from the edges.

    The 1-D profile is ``r(i) = (1 - cos(pi * (i + 0.5) / overlap)) / 2`` for the
    first ``overlap`` px, mirrored for the last, 1 between; ``r(i) + r(overlap - 1 - i) = 1``,
    so neighbouring windows at stride ``tile - overlap`` sum to 1. Its largest
    step between neighbouring pixels is ``sin(pi / (2 * overlap)) <= pi / (2 * overlap)``.
    """
    _check(tile, overlap)
    w = np.ones(tile, np.float64)
    if overlap:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap] = ramp
        w[tile - overlap:] = np.minimum(w[tile - overlap:], ramp[::-1])
    return np.outer(w, w).astype(np.float32)


def reflect_index(idx: np.ndarray, length: int) -> np.ndarray:
    """Map any integer coordinates into ``[0, length)`` by mirror reflection (edge pixel repeated)."""
    m = np.mod(idx, 2 * length)
    return np.where(m >= length, 2 * length - 1 - m, m)


def read_window(image: np.ndarray, y0: int, x0: int, tile: int) -> np.ndarray:
    """The ``tile`` x ``tile`` window at ``(y0, x0)`` of ``image (H, W, ...)``, reflected where it leaves the image."""
    h, w = image.shape[:2]
    if 0 <= y0 and 0 <= x0 and y0 + tile <= h and x0 + tile <= w:
        return image[y0:y0 + tile, x0:x0 + tile]
    iy = reflect_index(np.arange(y0, y0 + tile), h)
    ix = reflect_index(np.arange(x0, x0 + tile), w)
    return image[iy[:, None], ix[None, :]]


class Canvas:
    """Weighted sum of overlapping tile outputs and the sum of weights, both float32.

    Parameters
    ----------
    h, w : image size in px.
    channels : channels per pixel.
    weights : ``(tile, tile)`` blend weights, from :func:`blend_weights`.
    """

    def __init__(self, h: int, w: int, channels: int, weights: np.ndarray) -> None:
        self.h, self.w = h, w
        self.weights = np.asarray(weights, np.float32)
        self.acc = np.zeros((h, w, channels), np.float32)
        self.wsum = np.zeros((h, w), np.float32)

    def add(self, values: np.ndarray, y0: int, x0: int) -> None:
        """Add a window's output ``(tile, tile, C)`` (any range, usually [0, 255]) at ``(y0, x0)``, clipped to the image."""
        t = self.weights.shape[0]
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + t, self.h), min(x0 + t, self.w)
        if ya >= yb or xa >= xb:
            return
        sy, sx = slice(ya - y0, yb - y0), slice(xa - x0, xb - x0)
        wgt = self.weights[sy, sx]
        self.acc[ya:yb, xa:xb] += values[sy, sx].astype(np.float32) * wgt[..., None]
        self.wsum[ya:yb, xa:xb] += wgt

    def result(self) -> np.ndarray:
        """Normalised image ``(h, w, C)`` uint8: the weighted mean, rounded and clipped to [0, 255]."""
        if not (self.wsum > 0).all():
            raise ValueError("some canvas pixels were not covered by any tile")
        out = self.acc / self.wsum[..., None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
