"""Overlay of both nucleus counters on scikit-image's real IHC sample (a picture to check by eye).

Run: ``python benchmarks/nuclei_overlay.py [--out docs/nuclei-real-ihc.png]``. Left: classical,
right: bundled CPP-Net; instance outlines in yellow, centroids in cyan, the Eq. 1 mask (r = 30) in green.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_prep.mask import MaskConfig, dab_mask  # noqa: E402
from atst_prep.nuclei import make_counter  # noqa: E402
from atst_prep.stain import dab_and_hematoxylin  # noqa: E402


def overlay(ihc: np.ndarray, labels: np.ndarray, centroids: np.ndarray, mask: np.ndarray, title: str) -> np.ndarray:
    out = ihc.copy()
    edges = cv2.morphologyEx((labels > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    edges |= cv2.Laplacian(labels.astype(np.float32), cv2.CV_32F) != 0  # borders between touching nuclei
    out[edges & (labels > 0)] = (255, 230, 0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (0, 200, 0), 2)
    for x, y in centroids:
        cv2.circle(out, (int(round(x)), int(round(y))), 2, (0, 230, 230), -1)
    inside = int(np.count_nonzero(mask[np.clip(np.rint(centroids[:, 1]).astype(int), 0, mask.shape[0] - 1),
                                       np.clip(np.rint(centroids[:, 0]).astype(int), 0, mask.shape[1] - 1)]))
    text = f"{title}: {len(centroids)} nuclei, {inside} in mask"
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
    cv2.rectangle(out, (4, 4), (12 + w, 14 + h), (0, 0, 0), -1)
    cv2.putText(out, text, (8, 9 + h), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/nuclei-real-ihc.png"))
    args = parser.parse_args()
    ihc = data.immunohistochemistry()
    dab, hema = dab_and_hematoxylin(ihc)
    mask = dab_mask(ihc, MaskConfig(closing_radius=30))
    panels = []
    for name in ("classical", "cppnet"):
        nuclei = make_counter(name).detect(hema, dab)
        panels.append(overlay(ihc, nuclei.labels, nuclei.centroids, mask, name))
        print(f"{name}: {len(nuclei)} nuclei, {nuclei.count_in(mask)} inside the mask")
    sheet = np.concatenate([panels[0], np.full((ihc.shape[0], 6, 3), 255, np.uint8), panels[1]], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"overlay: {args.out}")


if __name__ == "__main__":
    main()
