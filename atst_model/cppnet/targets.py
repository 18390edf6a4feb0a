"""Training targets from instance labels: object probability, ray distances, density.

Numpy in, numpy out; StarDist's C++ code computes the ray distances.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from stardist import edt_prob, star_dist

#: Gaussian sigma (px) of each nucleus's unit mass in the density target.
DENSITY_SIGMA = 2.0


def instance_centroids(labels: np.ndarray) -> np.ndarray:
    """(N, 2) float32 (x, y) centroids of labels 1..max (empty labels are dropped)."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if not len(ids):
        return np.zeros((0, 2), np.float32)
    rows_cols = np.asarray(ndi.center_of_mass(np.ones_like(labels), labels, ids), np.float64)
    return rows_cols[:, ::-1].astype(np.float32)


def density_map(centroids: np.ndarray, shape: tuple[int, int], sigma: float = DENSITY_SIGMA) -> np.ndarray:
    """Each centroid as a Gaussian of unit mass: the map sums to the number of nuclei it holds.

    Mass falling outside the tile is lost, as a nucleus centred outside is not counted.
    """
    impulses = np.zeros(shape, np.float32)
    xy = np.rint(np.asarray(centroids)).astype(int).reshape(-1, 2)
    keep = (xy[:, 0] >= 0) & (xy[:, 0] < shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < shape[0])
    np.add.at(impulses, (xy[keep, 1], xy[keep, 0]), 1.0)
    size = 2 * int(4 * sigma + 0.5) + 1
    return cv2.GaussianBlur(impulses, (size, size), sigma, borderType=cv2.BORDER_CONSTANT)


def make_targets(labels: np.ndarray, n_rays: int) -> dict[str, np.ndarray]:
    """``prob`` (H, W), ``dist`` (n_rays, H, W), ``density`` (H, W), all float32."""
    labels = np.ascontiguousarray(labels, dtype=np.uint16)
    prob = edt_prob(labels).astype(np.float32)
    dist = np.moveaxis(star_dist(labels, n_rays, mode="cpp"), -1, 0).astype(np.float32)
    density = density_map(instance_centroids(labels), labels.shape)
    return {"prob": prob, "dist": np.ascontiguousarray(dist), "density": density}
