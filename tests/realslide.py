"""The real H&E slide of ``tests/data`` (CMU-Small-Region, CC0) and tiles of it that hold tissue."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

SLIDE = Path(__file__).parent / "data" / "CMU-Small-Region.svs"

#: Top-left (x, y) px of 512 px tiles with >= 85 % tissue and >= 128 px of slide around them.
TILES_512 = ((896, 640), (1152, 640), (896, 896), (1152, 896), (896, 1152), (1152, 1152), (896, 1408),
             (1152, 1408), (896, 1664), (1152, 1664), (896, 1920), (1152, 1920), (640, 2176), (896, 2176),
             (1152, 2176), (1408, 1920))


@lru_cache(maxsize=1)
def read_slide() -> np.ndarray:
    """The slide's full-resolution level, (2967, 2220, 3) uint8 RGB (JPEG tiles: needs ``imagecodecs``)."""
    import tifffile

    return tifffile.imread(SLIDE, key=0)
