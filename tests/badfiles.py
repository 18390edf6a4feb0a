"""Bad input files of every kind the issue lists, made from a good tile."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

#: pair name -> (which side is bad, substring of the expected reason)
BAD_PAIRS = {
    "bad_truncated_jpeg": ("he", "truncated JPEG"),
    "bad_truncated_png": ("ihc", "truncated PNG"),
    "bad_zero_bytes": ("ihc", "empty file"),
    "bad_not_an_image": ("he", "not a decodable image"),
    "bad_grayscale": ("ihc", "grayscale"),
    "bad_rgba": ("ihc", "RGBA"),
    "bad_16bit": ("ihc", "16-bit"),
    "bad_size": ("ihc", "differs from its H&E"),
    "bad_blank": ("he", "blank"),
}


def _png(path: Path, array: np.ndarray) -> None:
    assert cv2.imwrite(str(path), array)


def add_bad_pairs(he_dir: Path, ihc_dir: Path, good_he: Path, good_ihc: Path) -> dict[str, tuple[str, str]]:
    """Write one bad pair per entry of BAD_PAIRS (plus a missing partner); return BAD_PAIRS."""
    he_bgr, ihc_bgr = cv2.imread(str(good_he)), cv2.imread(str(good_ihc))

    def pair(name: str, ext: str) -> tuple[Path, Path]:
        he, ihc = he_dir / f"{name}{ext}", ihc_dir / f"{name}{ext}"
        if ext == ".jpg":
            shutil.copy(good_he, he)
            shutil.copy(good_ihc, ihc)
        else:
            _png(he, he_bgr)
            _png(ihc, ihc_bgr)
        return he, ihc

    he, _ = pair("bad_truncated_jpeg", ".jpg")
    he.write_bytes(he.read_bytes()[: he.stat().st_size // 2])
    _, ihc = pair("bad_truncated_png", ".png")
    ihc.write_bytes(ihc.read_bytes()[: ihc.stat().st_size // 2])
    _, ihc = pair("bad_zero_bytes", ".jpg")
    ihc.write_bytes(b"")
    he, _ = pair("bad_not_an_image", ".jpg")
    he.write_text("this is not an image\n")
    _, ihc = pair("bad_grayscale", ".png")
    _png(ihc, cv2.cvtColor(ihc_bgr, cv2.COLOR_BGR2GRAY))
    _, ihc = pair("bad_rgba", ".png")
    _png(ihc, cv2.cvtColor(ihc_bgr, cv2.COLOR_BGR2BGRA))
    _, ihc = pair("bad_16bit", ".png")
    _png(ihc, ihc_bgr.astype(np.uint16) * 257)
    _, ihc = pair("bad_size", ".png")
    _png(ihc, ihc_bgr[: ihc_bgr.shape[0] // 2])
    he, ihc = pair("bad_blank", ".png")
    _png(he, np.full_like(he_bgr, 247))
    shutil.copy(good_he, he_dir / "bad_missing_partner.jpg")
    return BAD_PAIRS
