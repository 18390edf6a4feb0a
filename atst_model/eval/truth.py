"""Scores of a virtual IHC against exact truth: where it is positive, how strongly, how many positive nuclei.

On synthetic pairs (:func:`atst_prep.synth.write_dataset`) the truth is
known in the H&E frame, which is the frame of a fake IHC made from that H&E:
the biomarker-positive region and the positive nuclei. A fake IHC is read
the way prep reads a real one: DAB and hematoxylin by the same unmixing,
its positive mask by the same Eq. 1 (:func:`atst_prep.mask.mask_from_dab`)
and its nuclei by the same counter. Then, per tile:

- ``dice``, ``iou``: the extracted mask against the true positive region.
  A tile whose region and mask are both empty scores 1 (a correct negative),
  one of the two empty 0.
- ``dab_in_region``: mean DAB density (rgb2hed units) of the image inside the
  true region; ``dab_error`` = that of the fake minus that of the real IHC
  inside *its* true region (the IHC frame's mask). NaN on tiles without a
  positive region; summaries average the tiles that have one.
- ``positive_count``: nuclei detected in the image whose centroid lies in
  its extracted mask (what L5 matches); ``count_rel_error`` =
  ``|count - true| / max(true, 1)`` with ``true`` the positive nuclei of the
  truth (an empty tile with no detection scores 0).
- ``psnr``, ``ssim``: against the real IHC, by :mod:`atst_model.metrics`.

Scoring the real IHC against the IHC frame's truth (``frame="ihc"``) gives
the ceiling set by Eq. 1 and the counter themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atst_prep.mask import MaskConfig, mask_from_dab
from atst_prep.nuclei import NucleusCounter
from atst_prep.stain import dab_and_hematoxylin

from ..metrics import psnr, ssim

__all__ = ["TileTruth", "dice_iou", "mean_in", "relative_count_error", "score_tile", "summarise", "TRUTH_METRICS"]

#: Per-tile scores, in report order.
TRUTH_METRICS = ("dice", "iou", "dab_error", "count_rel_error", "psnr", "ssim")


@dataclass(frozen=True)
class TileTruth:
    """What is known of one tile in one frame: positive region (H, W) bool and positive nuclei count."""

    region: np.ndarray
    positive_nuclei: int

    @classmethod
    def from_synth(cls, truth: dict, frame: str = "he") -> "TileTruth":
        """The truth of a synthetic pair (:func:`atst_prep.synth.load_truth`) in frame ``he`` or ``ihc``."""
        if frame not in ("he", "ihc"):
            raise ValueError(f"frame must be 'he' or 'ihc', got {frame!r}")
        return cls(np.asarray(truth[f"positive_mask_{frame}"], bool), len(truth[f"positive_centroids_{frame}"]))


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two (H, W) masks (nonzero = positive); both empty: (1, 1)."""
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    inter, sp, st = int(np.count_nonzero(p & t)), int(np.count_nonzero(p)), int(np.count_nonzero(t))
    if sp + st == 0:
        return 1.0, 1.0
    return 2.0 * inter / (sp + st), inter / (sp + st - inter)


def mean_in(values: np.ndarray, region: np.ndarray) -> float:
    """Mean of ``values`` over the True pixels of ``region`` (float64 sum); NaN if the region is empty."""
    region = np.asarray(region, bool)
    n = int(np.count_nonzero(region))
    return float(np.asarray(values, np.float64)[region].sum() / n) if n else math.nan


def relative_count_error(count: int, true: int) -> float:
    """``|count - true| / max(true, 1)``."""
    return abs(int(count) - int(true)) / max(int(true), 1)


def score_tile(image: np.ndarray, truth: TileTruth, *, real_ihc: np.ndarray, real_truth: TileTruth,
               mask_config: MaskConfig, counter: NucleusCounter) -> dict:
    """Scores of one (virtual or real) IHC tile (H, W, 3) uint8 against ``truth`` (module docstring).

    ``real_ihc`` and ``real_truth`` (its IHC-frame truth) give the reference
    DAB intensity and the PSNR/SSIM target.
    """
    dab, hema = dab_and_hematoxylin(image)
    mask = mask_from_dab(dab, mask_config) > 0
    if mask.shape != truth.region.shape:
        raise ValueError(f"image is {mask.shape[1]}x{mask.shape[0]} px, the truth {truth.region.shape[1]}x"
                         f"{truth.region.shape[0]}")
    dice, iou = dice_iou(mask, truth.region)
    count = counter.detect(hema, dab).count_in(mask)
    dab_in = mean_in(dab, truth.region)
    real_dab = mean_in(dab_and_hematoxylin(real_ihc)[0], real_truth.region)
    return {"dice": dice, "iou": iou, "mask_fraction": float(mask.mean()), "dab_in_region": dab_in,
            "dab_error": dab_in - real_dab, "positive_count": count, "true_count": truth.positive_nuclei,
            "count_rel_error": relative_count_error(count, truth.positive_nuclei),
            "psnr": psnr(image, real_ihc), "ssim": ssim(image, real_ihc)}


def summarise(rows: list[dict]) -> dict:
    """Means over tiles: ``dice``, ``iou``, ``count_rel_error``, ``psnr``, ``ssim`` over all; ``dab_abs_error``
    (mean |dab_error|) over the tiles with a positive region; plus ``tiles`` and ``positive_tiles``."""
    if not rows:
        raise ValueError("no tiles to summarise")
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("dice", "iou", "count_rel_error", "psnr", "ssim")}
    errors = [abs(r["dab_error"]) for r in rows if not math.isnan(r["dab_error"])]
    out["dab_abs_error"] = float(np.mean(errors)) if errors else math.nan
    out["tiles"], out["positive_tiles"] = len(rows), len(errors)
    return out
