"""Pairs with a known misalignment made from a real H&E image: check the aligner on real tissue.

No public H&E/IHC tile pair comes with its true misalignment, so the H&E
itself is re-stained: its hematoxylin is unmixed (Ruifrok & Johnston) and
rendered again by Beer-Lambert as an IHC-like image (a lighter hematoxylin
counterstain, no eosin, DAB on a smooth region), seen through a known
transform, with another stain balance, blur, noise and a JPEG round trip.
The transform is that of :mod:`atst_prep.synth` and :mod:`.score`: a point
``p`` of the H&E tile appears at ``R(rotation) (p - c) + c + shift`` in the
IHC tile (``c`` the tile centre), plus an optional smooth elastic
displacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .._synth_render import jpeg_roundtrip, smooth_noise
from ..stain import DAB, HEMATOXYLIN, LOG_ADJUST, RGB_FROM_HED, stain_channel
from .score import rotation_matrix


@dataclass(frozen=True)
class RealPair:
    """One pair: ``he`` and ``ihc`` (size, size, 3) uint8 RGB; the true ``shift`` (x, y) px and ``rotation`` deg."""

    he: np.ndarray
    ihc: np.ndarray
    shift: tuple[float, float]
    rotation: float


def restain_as_ihc(he_rgb: np.ndarray, rng: np.random.Generator, *, counterstain: float = 0.6,
                   dab_level: float = 0.25, dab_fraction: float = 0.3) -> np.ndarray:
    """An IHC-like RGB (H, W, 3) uint8 from an H&E RGB of the same size (no transform, no JPEG).

    Hematoxylin is kept (times ``counterstain``, as IHC counterstain is
    lighter), eosin dropped, and DAB (``dab_level`` rgb2hed units, textured
    by the hematoxylin so it looks cellular) added on a smooth random region
    covering about ``dab_fraction`` of the tile.
    """
    hema = stain_channel(he_rgb, HEMATOXYLIN)
    field = smooth_noise(rng, hema.shape, max(hema.shape) / 4)
    region = field > np.quantile(field, 1 - dab_fraction)
    dab = np.where(region, dab_level * (0.5 + np.clip(hema / 0.1, 0, 1)), 0).astype(np.float32)
    stains = RGB_FROM_HED * (1 + rng.normal(0, 0.03, (3, 3)))  # another slide's stain vectors
    od = counterstain * hema[..., None] * stains[HEMATOXYLIN] + dab[..., None] * stains[DAB]
    white = rng.uniform(238, 250) + rng.normal(0, 1.5, 3)
    rgb = white * np.exp(-LOG_ADJUST * od.astype(np.float32))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def misaligned_pair(slide: np.ndarray, origin: tuple[int, int], size: int, shift, rotation: float, seed: int,
                    *, elastic: float = 1.5) -> RealPair:
    """Cut an H&E tile at ``origin`` (x, y) of ``slide`` and its IHC-like partner under a known transform.

    Parameters
    ----------
    slide : (H, W, 3) uint8 RGB H&E, with room around the tile for the transform.
    origin : (x, y) px of the tile's top-left corner in ``slide``.
    size : tile side, px.
    shift : (dx, dy) px; rotation : deg (module docstring).
    seed : seeds the stain, DAB region, elastic field and noise.
    elastic : largest smooth elastic displacement, px (0: rigid).

    Returns
    -------
    RealPair
    """
    rng = np.random.default_rng(seed)
    x0, y0 = origin
    he = np.ascontiguousarray(slide[y0:y0 + size, x0:x0 + size])
    if he.shape != (size, size, 3):
        raise ValueError(f"tile at {origin} of size {size} leaves the slide ({slide.shape[1]}x{slide.shape[0]})")
    # restain only the neighbourhood the transform can reach (the whole slide would cost ~20x more)
    reach = int(np.ceil(np.hypot(*shift) + size * abs(np.deg2rad(rotation)) + elastic)) + 16
    rx, ry = max(x0 - reach, 0), max(y0 - reach, 0)
    region = slide[ry:y0 + size + reach, rx:x0 + size + reach]
    restained = restain_as_ihc(region, rng)
    origin = (x0 - rx, y0 - ry)
    # IHC pixel q shows the region at T^-1(q) + origin, T^-1(q) = R^T (q - c - d) + c
    c = np.array([(size - 1) / 2, (size - 1) / 2])
    rt = rotation_matrix(rotation).T
    affine = np.hstack([rt, (c + np.asarray(origin, float) - rt @ (c + np.asarray(shift, float)))[:, None]])
    gx, gy = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    map_x = affine[0, 0] * gx + affine[0, 1] * gy + affine[0, 2]
    map_y = affine[1, 0] * gx + affine[1, 1] * gy + affine[1, 2]
    if elastic > 0:  # a smooth displacement field, zero mean, largest magnitude ``elastic``
        ex, ey = (smooth_noise(rng, (size, size), size / 2) for _ in range(2))
        scale = elastic / max(float(np.hypot(ex, ey).max()), 1e-6)
        map_x, map_y = map_x + scale * ex, map_y + scale * ey
    ihc = cv2.remap(restained, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT)
    ihc = cv2.GaussianBlur(ihc, (0, 0), rng.uniform(0.4, 0.8))  # another scanner's optics
    noisy = ihc.astype(np.float32) + rng.normal(0, 1.5, ihc.shape).astype(np.float32)
    _, ihc = jpeg_roundtrip(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), int(rng.integers(80, 95)))
    return RealPair(he=he, ihc=ihc, shift=(float(shift[0]), float(shift[1])), rotation=float(rotation))
