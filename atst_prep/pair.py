"""One pair, prepared: read and check both images, unmix the IHC, Eq. 1 on the tile and on each training window."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .images import InputError, blank_reason, decode_rgb, read_file
from .mask import mask_from_gray, window_masks, window_origins
from .shards import PreparedPair
from .sources import Pair
from .stain import dab_and_hematoxylin, dab_gray

if TYPE_CHECKING:
    from .build import BuildConfig

#: Tiles need at least this many px on a side.
MIN_SIDE = 64


def rel_path(path: Path, root: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def size_of(path: Path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return -1


# --------------------------------------------------------------------------- per pair


def prepare_pair(pair: Pair, root: str, config: "BuildConfig") -> PreparedPair:
    """Read, check, unmix and mask one pair; raises InputError for a bad input."""
    he_file, ihc_file = read_file(pair.he), read_file(pair.ihc)
    he, ihc = decode_rgb(he_file, pair.he), decode_rgb(ihc_file, pair.ihc)
    if he.shape != ihc.shape:
        raise InputError(pair.ihc, f"size {ihc.shape[1]}x{ihc.shape[0]} differs from its H&E partner's "
                                   f"{he.shape[1]}x{he.shape[0]} ({pair.he.name})")
    if min(he.shape[:2]) < MIN_SIDE:
        raise InputError(pair.he, f"too small ({he.shape[1]}x{he.shape[0]}); tiles need >= {MIN_SIDE} px a side")
    fractions = {}
    for label, path, image in (("H&E", pair.he, he), ("IHC", pair.ihc, ihc)):
        reason, fractions[label] = blank_reason(image, config.min_tissue)
        if reason:
            raise InputError(path, f"{label}: {reason}")
    dab, hema = dab_and_hematoxylin(ihc)
    gray = dab_gray(dab)
    origins = window_origins(*dab.shape, config.window, config.window_stride)
    return PreparedPair(
        name=pair.name, he_path=rel_path(pair.he, root), ihc_path=rel_path(pair.ihc, root), meta=dict(pair.meta),
        he=he, ihc=ihc, dab=dab, hema=hema, mask=mask_from_gray(gray, config.mask),
        tissue_fraction_he=fractions["H&E"], tissue_fraction_ihc=fractions["IHC"],
        window=config.window, window_stride=config.window_stride, window_origins=origins,
        window_masks=window_masks(dab, origins, config.window, config.mask, gray=gray),
        **(dict(he_file=he_file, ihc_file=ihc_file) if config.layout == "compact" and config.store_images else {}),
    )


__all__ = ["MIN_SIDE", "prepare_pair", "rel_path", "size_of"]
