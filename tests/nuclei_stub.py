"""Stand-in nucleus counters for tests (registered on import): fast, deterministic, no weights."""

from __future__ import annotations

import cv2
import numpy as np

from atst_prep.nuclei import Nuclei, register_counter


class BlobCounter:
    """Connected components of hematoxylin above a threshold: a crude but real detector."""

    name = "test-blobs"
    version = "1"

    def __init__(self, threshold: float = 0.06, min_area: int = 10) -> None:
        self.threshold, self.min_area = threshold, min_area

    def params(self) -> dict:
        return {"threshold": self.threshold, "min_area": self.min_area}

    def detect(self, hema: np.ndarray, dab: np.ndarray) -> Nuclei:
        n, labels, stats, centroids = cv2.connectedComponentsWithStats((hema > self.threshold).astype(np.uint8), 8)
        keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= self.min_area) + 1
        return Nuclei(centroids[keep].astype(np.float32), stats[keep, cv2.CC_STAT_AREA].astype(np.int32))


class GridCounter:
    """Fixed centroids on a 32 px grid, whatever the tile: "another counter"."""

    name = "test-grid"
    version = "2"

    def params(self) -> dict:
        return {"step": 32}

    def detect(self, hema: np.ndarray, dab: np.ndarray) -> Nuclei:
        h, w = hema.shape
        ys, xs = np.mgrid[16:h:32, 16:w:32]
        centroids = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)
        return Nuclei(centroids, np.full(len(centroids), 9, np.int32))


register_counter("test-blobs")(BlobCounter)
register_counter("test-grid")(GridCounter)

