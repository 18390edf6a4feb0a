"""The ``"cppnet"`` nucleus counter: a trained CPP-Net checkpoint behind the counter interface."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from atst_prep.nuclei import Nuclei, register_counter

from .model import load_checkpoint
from .predict import maps_to_instances, predict_maps, predict_maps_batch

log = logging.getLogger(__name__)

#: A "tiny" CPP-Net trained on synthetic tiles by ``atst prep train-nuclei`` (see benchmarks/RESULTS.md).
BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "cppnet-tiny-synthetic.pt"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def labels_to_nuclei(labels: np.ndarray) -> Nuclei:
    """Instance labels -> :class:`Nuclei` with labels renumbered 1..N in order of appearance."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int32)
    if ids[0] != 0:  # no background pixel at all
        inverse += 1
    n = int(inverse.max())
    if n == 0:
        return Nuclei(np.zeros((0, 2), np.float32), np.zeros(0, np.int32), inverse)
    areas = np.bincount(inverse.ravel(), minlength=n + 1)[1:]
    rows, cols = np.indices(labels.shape)
    cy = np.bincount(inverse.ravel(), rows.ravel(), minlength=n + 1)[1:] / np.maximum(areas, 1)
    cx = np.bincount(inverse.ravel(), cols.ravel(), minlength=n + 1)[1:] / np.maximum(areas, 1)
    return Nuclei(np.stack([cx, cy], 1).astype(np.float32), areas.astype(np.int32), inverse)


class CppNetCounter:
    """Detect nuclei with a CPP-Net checkpoint made by ``atst prep train-nuclei``."""

    name = "cppnet"
    version = "1"

    def __init__(self, weights: Path | None = None, device: str | None = None, prob_thresh: float | None = None,
                 nms_thresh: float | None = None, tile: int = 1024, nms_grid: int = 1) -> None:
        if weights is None:
            weights = BUNDLED_WEIGHTS
            log.info("cppnet: using the bundled weights %s (trained on synthetic tiles only; for real data "
                     "train with 'atst prep train-nuclei --shards ...')", weights)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.meta = load_checkpoint(weights, self.device)
        cfg = self.model.config
        self.prob_thresh = cfg.prob_thresh if prob_thresh is None else prob_thresh
        self.nms_thresh = cfg.nms_thresh if nms_thresh is None else nms_thresh
        self.tile = tile
        if nms_grid not in (1, 2):
            raise ValueError(f"nms_grid must be 1 or 2, got {nms_grid}")
        self.nms_grid = nms_grid
        self.weights_sha256 = _sha256(weights)

    def params(self) -> dict:
        params = {"weights_sha256": self.weights_sha256, "prob_thresh": self.prob_thresh,
                  "nms_thresh": self.nms_thresh, "in_channels": self.model.config.in_channels}
        return params if self.nms_grid == 1 else {**params, "nms_grid": self.nms_grid}

    def detect(self, hema: np.ndarray, dab: np.ndarray | None = None) -> Nuclei:
        channels = [hema] if self.model.config.in_channels == 1 else [hema, dab]
        image = np.stack([np.asarray(c, np.float32) for c in channels])
        # distances are refined only where the NMS can pick a polygon (probability above its threshold)
        maps = predict_maps(self.model, image, tile=self.tile, device=self.device, prob_floor=self.prob_thresh)
        labels, _ = maps_to_instances(maps["prob"], maps["dist"], prob_thresh=self.prob_thresh,
                                      nms_thresh=self.nms_thresh, grid=self.nms_grid)
        return labels_to_nuclei(labels)

    def detect_many(self, channels: list[tuple[np.ndarray, np.ndarray | None]], batch: int | None = None) -> list[Nuclei]:
        """:meth:`detect` of several ``(hema, dab)`` tiles, the same nuclei; tiles of one size that fit one
        network tile go through the network ``batch`` at a time (default 8 on a GPU, 1 on a CPU, where a
        batch gains nothing)."""
        batch = batch or (8 if str(self.device).startswith("cuda") else 1)
        shapes = {np.shape(h) for h, _ in channels}
        if batch == 1 or len(shapes) != 1 or max(next(iter(shapes))) > self.tile:
            return [self.detect(h, d) for h, d in channels]
        found = []
        for i in range(0, len(channels), batch):
            images = [np.stack([np.asarray(c, np.float32) for c in ([h] if self.model.config.in_channels == 1
                                                                   else [h, d])]) for h, d in channels[i:i + batch]]
            for maps in predict_maps_batch(self.model, images, device=self.device, prob_floor=self.prob_thresh):
                labels, _ = maps_to_instances(maps["prob"], maps["dist"], prob_thresh=self.prob_thresh,
                                              nms_thresh=self.nms_thresh, grid=self.nms_grid)
                found.append(labels_to_nuclei(labels))
        return found


@register_counter("cppnet")
def _make(weights: Path | None = None, **kwargs) -> CppNetCounter:
    return CppNetCounter(weights, **kwargs)
