"""The public ATST-Net mask pipeline, written with scikit-image: the tests' oracle.

Step by step as in the public preparation script (float64 throughout):
``rgb2hed`` -> DAB channel re-rendered to RGB with ``hed2rgb`` -> ``rgb2gray``
-> ``gaussian(sigma=1)`` -> ``threshold_otsu``, foreground ``gray <= T`` ->
OpenCV erode then dilate (3x3 ones, 2 iterations each) -> scikit-image
``closing(disk(r))``. The product's fast code must agree with it.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.color import hed2rgb, rgb2gray, rgb2hed
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import closing, disk


def reference_dab_gray(ihc: np.ndarray) -> np.ndarray:
    hed = rgb2hed(ihc)
    null = np.zeros_like(hed[..., 0])
    return rgb2gray(hed2rgb(np.stack((null, null, hed[..., 2]), axis=-1)))


def reference_mask(ihc: np.ndarray, closing_radius: int) -> np.ndarray:
    """(H, W) bool mask exactly as the public script computes it."""
    gray = gaussian(reference_dab_gray(ihc), sigma=1)
    mask = (gray <= threshold_otsu(gray)).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    mask = cv2.erode(mask, kernel, iterations=2)
    mask = cv2.dilate(mask, kernel, iterations=2)
    return closing(mask.astype(bool), disk(closing_radius))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
