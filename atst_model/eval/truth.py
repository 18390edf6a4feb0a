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
- ``region_auc``: whether the image puts more DAB inside the true region
  than in the rest of the tissue, whatever the threshold: the area under the
  ROC curve of its DAB density (Gaussian-smoothed, sigma 4 px, to a regional
  level) separating region pixels from other tissue pixels (tissue: the
  H&E's optical-density test, :func:`atst_prep.images.tissue_mask`). 0.5
  means no knowledge of where; NaN when the tile lacks either class.
- ``psnr``, ``ssim``: against the real IHC, by :mod:`atst_model.metrics`.

Scoring the real IHC against the IHC frame's truth (``frame="ihc"``) gives
the ceiling set by Eq. 1 and the counter themselves.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from atst_prep.images import InputError, tissue_mask
from atst_prep.mask import MaskConfig, gaussian_blur, mask_from_dab
from atst_prep.nuclei import NucleusCounter
from atst_prep.stain import dab_and_hematoxylin
from atst_prep.synth import load_truth

from ..metrics import psnr, ssim
from .pairs import load_pair, match_pairs

__all__ = ["TileTruth", "dice_iou", "mean_in", "region_auc", "relative_count_error", "score_tile", "summarise",
           "score_folder", "TRUTH_METRICS"]

#: Per-tile scores, in report order.
TRUTH_METRICS = ("dice", "iou", "region_auc", "dab_error", "count_rel_error", "psnr", "ssim")
#: Smoothing of the DAB density before :func:`region_auc`, px.
AUC_SIGMA = 4.0


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


# Not a twin of atst_prep.align.score.dice (same 2|A&B| / (|A| + |B|), both empty 1): that one takes bool
# masks restricted to a ``where`` region, has no IoU and no shape check, and prep must not import atst_model.
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


def region_auc(values: np.ndarray, region: np.ndarray, tissue: np.ndarray) -> float:
    """Area under the ROC curve of ``values`` separating ``region & tissue`` from ``~region & tissue`` pixels.

    The Mann-Whitney statistic with average ranks for ties (0.5: no
    separation, 1: every region pixel above every other tissue pixel);
    NaN when either class is empty.
    """
    region, tissue = np.asarray(region, bool), np.asarray(tissue, bool)
    pos, neg = values[region & tissue], values[~region & tissue]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]).astype(np.float64))
    return float((ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def relative_count_error(count: int, true: int) -> float:
    """``|count - true| / max(true, 1)``."""
    return abs(int(count) - int(true)) / max(int(true), 1)


def score_tile(image: np.ndarray, truth: TileTruth, *, real_ihc: np.ndarray, real_truth: TileTruth,
               mask_config: MaskConfig, counter: NucleusCounter, tissue: np.ndarray | None = None) -> dict:
    """Scores of one (virtual or real) IHC tile (H, W, 3) uint8 against ``truth`` (module docstring).

    ``real_ihc`` and ``real_truth`` (its IHC-frame truth) give the reference
    DAB intensity and the PSNR/SSIM target; ``tissue`` (H, W) bool, the
    tissue of the tile's frame (default: the image's own), limits ``region_auc``.
    """
    dab, hema = dab_and_hematoxylin(image)
    mask = mask_from_dab(dab, mask_config) > 0
    if mask.shape != truth.region.shape:
        raise ValueError(f"image is {mask.shape[1]}x{mask.shape[0]} px, the truth {truth.region.shape[1]}x"
                         f"{truth.region.shape[0]}")
    dice, iou = dice_iou(mask, truth.region)
    auc = region_auc(gaussian_blur(dab, AUC_SIGMA), truth.region, tissue_mask(image) if tissue is None else tissue)
    count = counter.detect(hema, dab).count_in(mask)
    dab_in = mean_in(dab, truth.region)
    real_dab = mean_in(dab_and_hematoxylin(real_ihc)[0], real_truth.region)
    return {"dice": dice, "iou": iou, "region_auc": auc, "mask_fraction": float(mask.mean()), "dab_in_region": dab_in,
            "dab_error": dab_in - real_dab, "positive_count": count, "true_count": truth.positive_nuclei,
            "count_rel_error": relative_count_error(count, truth.positive_nuclei),
            "psnr": psnr(image, real_ihc), "ssim": ssim(image, real_ihc)}


def summarise(rows: list[dict]) -> dict:
    """Means over tiles: ``dice``, ``iou``, ``count_rel_error``, ``psnr``, ``ssim`` over all; ``dab_abs_error``
    (mean |dab_error|) over the tiles with a positive region, ``region_auc`` over the tiles where it is
    defined; plus ``tiles`` and ``positive_tiles``."""
    if not rows:
        raise ValueError("no tiles to summarise")
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("dice", "iou", "count_rel_error", "psnr", "ssim")}
    errors = [abs(r["dab_error"]) for r in rows if not math.isnan(r["dab_error"])]
    out["dab_abs_error"] = float(np.mean(errors)) if errors else math.nan
    aucs = [r["region_auc"] for r in rows if not math.isnan(r.get("region_auc", math.nan))]
    out["region_auc"] = float(np.mean(aucs)) if aucs else math.nan
    out["tiles"], out["positive_tiles"] = len(rows), len(errors)
    return out


def score_folder(fake_dir: Path, real_dir: Path, truth_path: Path, mask_config: MaskConfig,
                 counter: NucleusCounter, out_csv: Path | None = None) -> tuple[list[dict], dict, list[str]]:
    """Score every fake IHC of ``fake_dir`` whose name is in a synthetic truth file (``truth_<split>.npz``).

    Fakes are paired with ``real_dir`` by file stem (as ``atst eval`` pairs
    them) and with the truth by name. Returns ``(rows, summary, rejected)``;
    a bad or unmatched file is one line in ``rejected`` and the rest goes on.
    ``out_csv`` receives one row per tile.
    """
    try:
        truths = load_truth(Path(truth_path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(truth_path, f"not a synthetic truth file ({exc})") from None
    pairing = match_pairs(fake_dir, real_dir)
    rows, rejected = [], list(pairing.unmatched)
    for pair in pairing.pairs:
        truth = truths.get(pair.name)
        if truth is None:
            rejected.append(f"{pair.fake}: no truth for {pair.name!r} in {truth_path}")
            continue
        try:
            fake, real, _ = load_pair(pair)
            row = score_tile(fake, TileTruth.from_synth(truth, "he"), real_ihc=real,
                             real_truth=TileTruth.from_synth(truth, "ihc"), mask_config=mask_config, counter=counter)
        except (InputError, ValueError) as exc:
            rejected.append(str(exc) if isinstance(exc, InputError) else f"{pair.fake}: {exc}")
            continue
        rows.append({"name": pair.name, **row})
    if not rows:
        raise InputError(fake_dir, f"no fake image matches a name of {truth_path}")
    if out_csv is not None:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows, summarise(rows), rejected
