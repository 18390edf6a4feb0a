"""Move IHC-frame targets into the H&E frame by a measured translation.

With ``shift = (dx, dy)`` as in :mod:`.score` (a point ``p`` of the H&E sits
at ``p + shift`` in the IHC), the registered target is
``registered(p) = target(p + shift)``: content moves by ``-shift``. Only the
translation is undone (rotation and elastic deformation are left: they are
what the score penalises and what region-level losses tolerate).
"""

from __future__ import annotations

import cv2
import numpy as np


def register_image(image: np.ndarray, shift) -> np.ndarray:
    """``image`` (H, W[, C]) resampled at ``p + shift``; same dtype, 0 where the source is outside.

    Bilinear: a 0/1 uint8 mask stays 0/1 (OpenCV rounds, i.e. thresholds the
    interpolated value at 0.5); uint16 fixed-point densities are rounded to
    the nearest step. An integer shift moves the pixels exactly.
    """
    image = np.asarray(image)
    dx, dy = (float(v) for v in shift)
    m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
    if dx == round(dx) and dy == round(dy):  # exact, whatever the dtype
        return _integer_shift(image, int(round(dx)), int(round(dy)))
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _integer_shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)] = \
        image[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)]
    return out


def register_points(xy: np.ndarray, shift) -> np.ndarray:
    """(N, 2) float32 (x, y) IHC-frame points -> H&E frame (``xy - shift``); may leave the tile."""
    return (np.asarray(xy, np.float64).reshape(-1, 2) - np.asarray(shift, np.float64)).astype(np.float32)
