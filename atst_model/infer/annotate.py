"""The virtual IHC's DAB-positive region as a QuPath annotation (``atst translate --annotations``).

Eq. 1 (:func:`atst_prep.mask.dab_mask`) is applied to the fake IHC on its own, window by window: a grid of
non-overlapping ``window`` x ``window`` squares from the top-left corner (the last row and column
narrower), the same per-window rule as the training targets. The windows' masks tile level 0, so
merging them is their union. Rows arrive in order, as the stained slide is written, and are never held
whole: one row of windows is buffered, and the merged mask is kept at ``1 / factor`` of level 0's side
(``factor`` the smallest power of two that keeps it under :data:`MAX_MASK_PX`; 1 for slides up to
8192 x 8192), a reduced pixel being positive when at least half of its level-0 pixels are.

Areas are counted at level 0: the positive area, the tissue area (the H&E's optical-density test,
:func:`atst_prep.images.tissue_mask`) and the positive fraction of tissue. The polygons
(:func:`atst_prep.annotations.mask_polygons`, scaled to level-0 coordinates) are what QuPath draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

#: Largest merged mask kept in memory (px; 64 MB as bytes).
MAX_MASK_PX = 1 << 26
NAME, COLOR = "DAB-positive (virtual IHC, Eq. 1)", (200, 0, 0)


def mask_factor(height: int, width: int, limit: int = MAX_MASK_PX) -> int:
    """The smallest power of two ``f`` with ``ceil(h / f) * ceil(w / f) <= limit``."""
    f = 1
    while -(-height // f) * -(-width // f) > limit:
        f *= 2
    return f


@dataclass
class RegionSummary:
    """What :class:`PositiveRegion` measured at level 0."""

    positive_px: int
    tissue_px: int
    positive_in_tissue_px: int
    factor: int
    mpp: tuple[float, float] | None

    @property
    def fraction_of_tissue(self) -> float:
        return self.positive_in_tissue_px / self.tissue_px if self.tissue_px else 0.0

    def measurements(self) -> dict[str, float]:
        """QuPath measurement names and values."""
        m = {"Positive area px": float(self.positive_px), "Tissue area px": float(self.tissue_px),
             "Positive % of tissue": round(100.0 * self.fraction_of_tissue, 4)}
        if self.mpp:
            um2 = self.mpp[0] * self.mpp[1]
            m["Positive area um^2"] = round(self.positive_px * um2, 2)
            m["Tissue area um^2"] = round(self.tissue_px * um2, 2)
        return m


class PositiveRegion:
    """Accumulate Eq. 1 of the fake's windows as level-0 rows arrive; :meth:`write` the GeoJSON.

    Parameters
    ----------
    height, width : level 0 of the slide.
    window : side of the windows Eq. 1 runs on (the translation window, 512 by default).
    config : Eq. 1's parameters (:class:`atst_prep.mask.MaskConfig`).
    mpp : level 0's pixel size (um), for areas in um^2.
    """

    def __init__(self, height: int, width: int, window: int, config=None, mpp: tuple[float, float] | None = None,
                 max_mask_px: int = MAX_MASK_PX) -> None:
        from atst_prep.mask import MaskConfig

        self.height, self.width, self.window = height, width, window
        self.config = config or MaskConfig()
        self.mpp = mpp
        self.factor = f = mask_factor(height, width, max_mask_px)
        self.mask = np.zeros((-(-height // f), -(-width // f)), np.uint8)
        self._fake = np.empty((window, width, 3), np.uint8)
        self._he = np.empty((window, width, 3), np.uint8)
        self._filled = self._rows = self._reduced = 0
        self._pending = np.zeros((0, width), bool)  # level-0 mask rows not yet reduced (fewer than f)
        self.positive = self.tissue = self.both = 0

    def add(self, fake: np.ndarray, he: np.ndarray) -> None:
        """The next ``(n, W, 3)`` uint8 rows of the fake IHC and of the H&E they were made from."""
        if fake.shape != he.shape or fake.shape[1:] != (self.width, 3):
            raise ValueError(f"expected two ({self.width}, 3) row blocks of one shape, got {fake.shape} {he.shape}")
        i = 0
        while i < len(fake):
            n = min(self.window - self._filled, len(fake) - i)
            self._fake[self._filled:self._filled + n] = fake[i:i + n]
            self._he[self._filled:self._filled + n] = he[i:i + n]
            self._filled, self._rows, i = self._filled + n, self._rows + n, i + n
            if self._filled == self.window or self._rows == self.height:
                self._window_row(self._filled)
                self._filled = 0

    def consume(self, rows: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """:meth:`add` each ``(fake, he)`` pair of row blocks: the function of a :class:`.pipeline.Consumer`."""
        for fake, he in rows:
            self.add(fake, he)

    def _window_row(self, n: int) -> None:
        from atst_prep.images import tissue_mask
        from atst_prep.mask import dab_mask

        mask = np.zeros((n, self.width), bool)
        for x0 in range(0, self.width, self.window):
            mask[:, x0:x0 + self.window] = dab_mask(self._fake[:n, x0:x0 + self.window], self.config)
        tissue = tissue_mask(self._he[:n])
        self.positive += int(np.count_nonzero(mask))
        self.tissue += int(np.count_nonzero(tissue))
        self.both += int(np.count_nonzero(mask & tissue))
        self._reduce(mask)

    def _reduce(self, rows: np.ndarray) -> None:
        """Fold level-0 mask rows into :attr:`mask` (a reduced pixel is on when >= half of its block is)."""
        f = self.factor
        rows = np.concatenate([self._pending, rows]) if len(self._pending) else rows
        last = self._rows == self.height
        take = len(rows) if last else len(rows) - len(rows) % f
        block, self._pending = rows[:take], rows[take:]
        if not take:
            return
        if f == 1:
            self.mask[self._reduced:self._reduced + take] = block
            self._reduced += take
            return
        h, w = -(-take // f), self.mask.shape[1]
        padded = np.zeros((h * f, w * f), bool)
        padded[:take, :self.width] = block
        counts = padded.reshape(h, f, w, f).sum(axis=(1, 3), dtype=np.int32)
        # edge blocks hold fewer level-0 pixels: compare with half of those that exist
        inside = np.minimum(f, take - f * np.arange(h))[:, None] * np.minimum(f, self.width - f * np.arange(w))
        self.mask[self._reduced:self._reduced + h] = 2 * counts >= inside
        self._reduced += h

    def summary(self) -> RegionSummary:
        if self._rows != self.height:
            raise ValueError(f"got {self._rows} of {self.height} rows")
        return RegionSummary(self.positive, self.tissue, self.both, self.factor, self.mpp)

    def features(self, *, simplify: float = 0.5) -> list[dict]:
        """The annotation as GeoJSON Features in level-0 pixel coordinates (an empty region gives none);
        its measurements are :meth:`RegionSummary.measurements`."""
        from atst_prep.annotations import annotation_features, mask_polygons

        f = self.factor
        return annotation_features(mask_polygons(self.mask, simplify=simplify), name=NAME, color=COLOR,
                                   properties=self.summary().measurements(), affine=[f, 0, 0, f, 0, 0])

    def write(self, path: Path | str, *, simplify: float = 0.5, properties: dict | None = None) -> RegionSummary:
        """Write the GeoJSON FeatureCollection atomically, ``properties`` (about the slide) beside the features;
        returns the areas."""
        from atst_prep.annotations import write_geojson

        about = dict(properties or {}, window=self.window, closing_radius=self.config.closing_radius,
                     mask_factor=self.factor, **self.summary().measurements())
        write_geojson(Path(path), self.features(simplify=simplify), about)
        return self.summary()


__all__ = ["PositiveRegion", "RegionSummary", "mask_factor", "MAX_MASK_PX"]
