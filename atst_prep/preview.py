"""``atst prep preview``: a contact sheet a person can check a build with.

One row per sample: H&E | IHC | DAB density | IHC with the mask outlined
(green) and, once nuclei are counted, their centroids (cyan dots); the row's
label gives the mask fraction and "N nuclei (K in mask)".
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .images import read_rgb
from .nuclei import count_in_mask
from .shards import iter_samples, read_header

COLUMNS = ("H&E", "IHC", "DAB density", "IHC + mask + nuclei")
_HEADER = 28
#: RGB of the centroid dots.
NUCLEUS_COLOUR = (0, 230, 230)


def _dab_colour(dab: np.ndarray, vmax: float = 0.25) -> np.ndarray:
    """DAB density -> RGB, white (none) to dark brown (>= vmax)."""
    t = np.clip(dab.astype(np.float32) / vmax, 0, 1)[..., None]
    white, brown = np.float32([255, 255, 255]), np.float32([90, 45, 10])
    return (white * (1 - t) + brown * t).astype(np.uint8)


def thumb_coords(centroids: np.ndarray, full_shape: tuple[int, int], thumb_shape: tuple[int, int]) -> np.ndarray:
    """(x, y) pixel coordinates of a full-size tile -> those of its resized thumbnail (pixel centres kept)."""
    (h, w), (th, tw) = full_shape[:2], thumb_shape[:2]
    scale = np.array([tw / w, th / h], np.float64)
    return (np.asarray(centroids, np.float64).reshape(-1, 2) + 0.5) * scale - 0.5


def _outline(ihc: np.ndarray, mask: np.ndarray, centroids: np.ndarray | None) -> np.ndarray:
    """The (already downscaled) IHC with the mask tinted and outlined in green, centroids as cyan dots.

    ``centroids`` are (x, y) in the thumbnail's pixels (:func:`thumb_coords`).
    """
    out = ihc.copy()
    out[mask] = (0.7 * out[mask] + 0.3 * np.float32([0, 255, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 200, 0), thickness=1, lineType=cv2.LINE_AA)
    if centroids is not None:
        for x, y in np.rint(centroids).astype(np.int64):
            cv2.circle(out, (int(x), int(y)), 1, NUCLEUS_COLOUR, -1)
    return out


def _label(tile: np.ndarray, text: str) -> None:
    # the dark outline is the same thin text shifted around: a thicker stroke has other glyph
    # widths in OpenCV 5, and on a long label the two drift apart
    for dx, dy in ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)):
        cv2.putText(tile, text, (6 + dx, 18 + dy), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(tile, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)


def sample_row(sample: dict, thumb: int = 256) -> np.ndarray:
    """One contact-sheet row (thumb, 4*thumb, 3) uint8 for one shard sample."""
    ihc, mask = sample["ihc"], sample["mask"].astype(bool)
    scale = thumb / max(ihc.shape[:2])
    size = (int(round(ihc.shape[1] * scale)), int(round(ihc.shape[0] * scale)))
    small = {k: cv2.resize(sample[k], size, interpolation=cv2.INTER_AREA) for k in ("he", "ihc", "dab")}
    small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
    centroids = sample.get("centroids")
    dots = None if centroids is None else thumb_coords(centroids, mask.shape, small_mask.shape)
    panels = [small["he"], small["ihc"], _dab_colour(small["dab"]), _outline(small["ihc"], small_mask, dots)]
    row = np.full((thumb, thumb * len(panels), 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        row[: size[1], i * thumb: i * thumb + size[0]] = panel
    label = f"{sample['name']}  mask {mask.mean():.0%}"
    if centroids is not None:
        label += f"  {len(centroids)} nuclei ({count_in_mask(centroids, mask)} in mask)"
    _label(row, label)
    return row


def contact_sheet(samples: Iterable[dict], thumb: int = 256) -> np.ndarray:
    """Stack sample rows under a header naming the columns; (H, W, 3) uint8 RGB."""
    rows = [sample_row(s, thumb) for s in samples]
    if not rows:
        raise ValueError("no samples to preview")
    header = np.full((_HEADER, rows[0].shape[1], 3), 255, np.uint8)
    for i, title in enumerate(COLUMNS):
        cv2.putText(header, title, (i * thumb + 8, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    parts = [header]
    for row in rows:
        parts += [row, gap]
    return np.concatenate(parts[:-1], axis=0)


def preview_shards(shard_paths: Iterable[Path], n: int = 8, thumb: int = 256) -> np.ndarray:
    """Contact sheet of the first ``n`` samples found in ``shard_paths``."""
    chosen = []
    for path in shard_paths:
        root = Path(read_header(path)["source_root"])
        for sample in iter_samples(path, arrays=("he", "ihc", "dab", "mask")):
            for key in ("he", "ihc"):  # shards built with --no-images refer to the sources
                if key not in sample:
                    sample[key] = read_rgb(root / sample[f"{key}_path"])
            chosen.append(sample)
            if len(chosen) >= n:
                return contact_sheet(chosen, thumb)
    return contact_sheet(chosen, thumb)
