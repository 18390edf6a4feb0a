"""How well an H&E tile and its consecutive-section IHC line up: pure numpy/OpenCV functions.

Both stains carry hematoxylin, so the common signal is the hematoxylin
optical density of the H&E (unmixed from its RGB) and of the IHC (as
``build-masks`` stores it). Both are reduced to about ``work_size`` px a side
(INTER_AREA), lightly blurred, and compared:

1. for each angle of a coarse grid (``+-max_rotation`` deg, at half the
   working resolution) the IHC is rotated back about the tile centre and a
   Hann-windowed phase correlation gives the translation; the angle whose
   registration has the highest normalised cross-correlation (NCC) wins and
   is refined by two parabolic steps at the working resolution;
2. at the best angle, the sub-pixel translation (3x3 peak centroid of the
   phase correlation), the NCC over the common field of view and the Dice
   overlap of the two tissue masks are measured.

Conventions
-----------
- Points are ``(x, y)`` px of the full-resolution tile, pixel ``(r, c)`` is
  ``(x, y) = (c, r)``. The transform is that of :mod:`atst_prep.synth`: a
  point ``p`` of the H&E appears in the IHC at
  ``T(p) = R(rotation) (p - c) + c + shift``, ``c`` the tile centre
  ``((W-1)/2, (H-1)/2)``, ``R`` OpenCV's rotation (positive =
  counter-clockwise on screen). So ``shift`` says where the IHC content sits
  relative to the H&E: a pure shift of (+10, 0) means the IHC shows the
  tissue 10 px further right.
- Score (in [0, 1], higher is better aligned)::

      score = max(similarity, 0) * overlap * 2**-(|shift| / s_tol)**2 * 2**-(rotation / r_tol)**2

  with ``s_tol = shift_tolerance * (long side / 1024)`` px (32 px at MIST's
  1024 px) and ``r_tol = rotation_tolerance`` (5 deg): a pair shifted by
  exactly the tolerance loses half its score, one shifted by twice the
  tolerance all but 1/16.

Note: OpenCV 5.0's ``cv2.phaseCorrelate`` multiplies its inputs by the
window in place, so this module has its own (:func:`phase_correlation`;
why it is kept over the libraries: its comment).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from ..stain import HEMATOXYLIN, stain_channel

#: Bumped whenever a change alters any number this module returns.
VERSION = "1"
METHOD = "hematoxylin phase correlation + NCC"
#: Tile side at which ``shift_tolerance`` is given (MIST, BCI).
REFERENCE_SIDE = 1024


@dataclass(frozen=True)
class AlignConfig:
    """Parameters of the alignment estimate and of the score.

    Attributes
    ----------
    work_size : int
        Target long side, px, of the reduced images (an integer reduction
        factor ``round(side / work_size)``, at least 1, is used).
    blur : float
        Gaussian sigma, px at the working resolution, before comparing.
    max_rotation : float
        Rotations in ``[-max_rotation, max_rotation]`` deg are searched
        (0 turns the search off: translation only).
    rotation_step : float
        Grid step of the rotation search, deg.
    min_tissue : float
        A tile with a smaller tissue fraction (either stain) is unscorable.
    shift_tolerance : float
        px at a 1024 px tile (scaled with the long side): the shift at which
        the score halves.
    rotation_tolerance : float
        deg: the rotation at which the score halves.
    """

    work_size: int = 256
    blur: float = 1.0
    max_rotation: float = 10.0
    rotation_step: float = 2.0
    min_tissue: float = 0.05
    shift_tolerance: float = 32.0
    rotation_tolerance: float = 5.0

    def __post_init__(self) -> None:
        if not 32 <= self.work_size <= 4096:
            raise ValueError(f"work_size must be in [32, 4096] px, got {self.work_size}")
        if not 0 <= self.blur <= 8:
            raise ValueError(f"blur must be in [0, 8] px, got {self.blur}")
        if not 0 <= self.max_rotation <= 30:
            raise ValueError(f"max_rotation must be in [0, 30] deg, got {self.max_rotation}")
        if not 0.25 <= self.rotation_step <= 10:
            raise ValueError(f"rotation_step must be in [0.25, 10] deg, got {self.rotation_step}")
        if not 0 <= self.min_tissue < 1:
            raise ValueError(f"min_tissue must be in [0, 1), got {self.min_tissue}")
        if not (self.shift_tolerance > 0 and self.rotation_tolerance > 0):
            raise ValueError("shift_tolerance and rotation_tolerance must be > 0")

    def params(self) -> dict:
        return asdict(self)

    def shift_tolerance_px(self, shape: tuple[int, int]) -> float:
        """``shift_tolerance`` scaled to a tile of ``shape`` (H, W), px."""
        return self.shift_tolerance * max(shape[:2]) / REFERENCE_SIDE


@dataclass(frozen=True)
class Alignment:
    """The alignment of one pair; see the module docstring for the conventions.

    ``status`` is "done" or "unscorable" (then ``reason`` says why and the
    numbers are NaN).
    """

    status: str
    shift_x: float = math.nan      # px, IHC content relative to the H&E
    shift_y: float = math.nan
    rotation: float = math.nan     # deg
    similarity: float = math.nan   # NCC in [-1, 1] of the hematoxylin at the best alignment
    overlap: float = math.nan      # Dice in [0, 1] of the tissue masks at the best alignment
    score: float = math.nan        # [0, 1]
    reason: str = ""

    @property
    def scored(self) -> bool:
        return self.status == "done"

    @property
    def shift(self) -> float:
        """|shift|, px."""
        return math.hypot(self.shift_x, self.shift_y)


def unscorable(reason: str) -> Alignment:
    return Alignment(status="unscorable", reason=reason)


# --------------------------------------------------------------------------- building blocks


def reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``image`` (H, W[, C]) by an integer ``factor`` (trailing rows/columns dropped)."""
    if factor == 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return cv2.resize(image[:h, :w], (w // factor, h // factor), interpolation=cv2.INTER_AREA)


def to_working(xy, factor: int) -> np.ndarray:
    """Full-resolution (x, y) -> working-resolution (x, y) (pixel centres map onto pixel centres)."""
    return (np.asarray(xy, np.float64) - (factor - 1) / 2) / factor


def tissue_region(rgb: np.ndarray, *, blur: float = 1.5, margin: float = 0.04) -> np.ndarray:
    """(H, W) bool: pixels denser than the glass of the tile, by ``margin`` summed log10 optical density.

    IHC stroma carries only a pale counterstain (summed OD ~0.1, barely above
    glass at ~0.03-0.1), so a fixed threshold (build-masks' 0.15) would call it
    background in the IHC and tissue in the H&E. The glass level is taken as
    the 1st percentile of the tile's OD, capped at 0.12 (a tile full of tissue
    has no glass); the OD is smoothed by ``blur`` px so nuclei and the gaps
    between them merge into one tissue region.
    """
    rgb = np.asarray(rgb, np.float32)[..., :3] * np.float32(1 / 255)
    od = cv2.log(np.maximum(rgb, np.float32(1 / 255))).sum(axis=2) * np.float32(-1 / math.log(10))
    glass = min(float(np.percentile(od[::2, ::2], 1)), 0.12)
    if blur > 0:
        od = cv2.GaussianBlur(od, (0, 0), blur)
    return od > glass + margin


def hann(shape: tuple[int, int]) -> np.ndarray:
    return cv2.createHanningWindow((shape[1], shape[0]), cv2.CV_32F)


# Kept over cv2.phaseCorrelate and skimage.registration.phase_cross_correlation (issue 14,
# benchmarks/phase_correlation.py, real H&E and IHC tiles, 30 known shifts each, 2-core CPU):
# - cv2 (called on copies) is 3x faster per call and 1.6x per align_pair, and its `response` tells matched
#   from unrelated tiles as our peak does, but its 5x5 centroid is biased on same-stain sub-pixel shifts:
#   0.22 px mean error vs 0.05 px on scikit-image's IHC (4.6x), 0.09 vs 0.05 px on the H&E, and 0.32 px
#   at the half-pixel shift of test_phase_correlation_is_sub_pixel (fails its 0.25 px); on H&E-vs-IHC it is
#   the better one (0.18 vs 0.25 px at align_pair's 256 px; 0.20 vs 0.31 px through align_pair);
# - skimage (upsample 10-20) is no faster (0.9-1.4x), 1.6-2.9x less accurate on same-stain sub-pixel
#   shifts of byte images, 0.03-0.07 px more accurate on H&E-vs-IHC and on noise-free float shifts
#   (0.085 vs 0.12 px), and returns no peak height (its `error` is ~1 for matched and unrelated tiles
#   alike under phase normalisation);
# - either changes every shift in its last digits, and so the shards filter-misaligned writes
#   (tests/test_pass_identity.py fails with either). test_phase_correlation_is_sub_pixel_on_the_real_ihc_sample
#   pins the accuracy this is kept for.
def phase_correlation(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> tuple[float, float, float]:
    """Translation of ``b``'s content relative to ``a``'s: ``b(x) ~ a(x - (dx, dy))``.

    Parameters
    ----------
    a, b : (H, W) float32, zero-mean images of one size.
    window : (H, W) float32 apodisation (Hann).

    Returns
    -------
    dx, dy : px (wrapped to ``[-W/2, W/2)``, ``[-H/2, H/2)``), sub-pixel by
        the 3x3 centroid of the correlation peak.
    peak : height of the normalised correlation peak (1 for identical images).
    """
    fa = cv2.dft(a * window, flags=cv2.DFT_COMPLEX_OUTPUT)
    fb = cv2.dft(b * window, flags=cv2.DFT_COMPLEX_OUTPUT)
    cross = cv2.mulSpectrums(fb, fa, 0, conjB=True)
    # pure whitening: measured on synthetic pairs it gives the best sub-pixel peak (0.2 px at 1024 px)
    cross /= (cv2.magnitude(cross[..., 0], cross[..., 1]) + np.float32(1e-12))[..., None]
    surface = cv2.idft(cross, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    h, w = surface.shape
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    patch = surface[np.ix_((iy + np.arange(-1, 2)) % h, (ix + np.arange(-1, 2)) % w)]
    patch = np.maximum(patch, 0)  # the centroid of the positive lobe: 0.03 px on band-limited tiles
    total = float(patch.sum())
    ox = float((patch.sum(axis=0) * np.arange(-1, 2)).sum()) / total
    oy = float((patch.sum(axis=1) * np.arange(-1, 2)).sum()) / total
    dx, dy = (ix + ox + w / 2) % w - w / 2, (iy + oy + h / 2) % h - h / 2
    return dx, dy, float(surface[iy, ix])


def rotation_matrix(degrees: float) -> np.ndarray:
    """2x2 rotation in OpenCV's convention (as :func:`atst_prep._synth_render.rotation_matrix`)."""
    a, b = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[a, b], [-b, a]])


def pull_back(image: np.ndarray, shift, rotation: float, centre, *, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """``out(p) = image(R (p - centre) + centre + shift)``: the IHC resampled in the H&E frame.

    Pixels whose source lies outside ``image`` are 0. ``shift`` (x, y) px and
    ``centre`` (x, y) px in ``image``'s pixels; ``rotation`` deg.
    """
    r = rotation_matrix(rotation)
    c = np.asarray(centre, np.float64)
    m = np.hstack([r, (c + np.asarray(shift, np.float64) - r @ c)[:, None]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), flags=interpolation | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def ncc(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson) of ``a`` and ``b`` over the True pixels of ``where``; 0 if flat.

    ``a``, ``b`` (H, W) float32, ``where`` (H, W) bool. OpenCV's masked means
    (accumulated in float64): 20x faster than numpy's boolean indexing, which
    the rotation search calls some twenty times per pair.
    """
    mask = np.ascontiguousarray(where).view(np.uint8)
    if cv2.countNonZero(mask) < 2:
        return 0.0
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    mean_a, std_a = (float(v[0, 0]) for v in cv2.meanStdDev(a, mask=mask))
    mean_b, std_b = (float(v[0, 0]) for v in cv2.meanStdDev(b, mask=mask))
    if std_a * std_b <= 0:
        return 0.0
    cov = cv2.mean(cv2.multiply(a - np.float32(mean_a), b - np.float32(mean_b)), mask=mask)[0]
    return float(np.clip(cov / (std_a * std_b), -1.0, 1.0))


def dice(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """Dice coefficient of two bool masks over the True pixels of ``where``; 1 if both are empty."""
    a, b = a & where, b & where
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2 * int(np.count_nonzero(a & b)) / total if total else 1.0


def combined_score(similarity: float, overlap: float, shift: float, rotation: float,
                   shift_tolerance: float, rotation_tolerance: float) -> float:
    """The documented score (module docstring); ``shift`` px and ``shift_tolerance`` px of the same tile."""
    return (max(similarity, 0.0) * overlap * 2.0 ** -((shift / shift_tolerance) ** 2)
            * 2.0 ** -((rotation / rotation_tolerance) ** 2))


# --------------------------------------------------------------------------- the estimate


@dataclass
class _Level:
    """One resolution of the pair, ready for phase correlation."""

    he: np.ndarray
    ihc: np.ndarray
    window: np.ndarray
    centre: np.ndarray
    ones: np.ndarray

    @classmethod
    def make(cls, he: np.ndarray, ihc: np.ndarray, blur: float) -> "_Level":
        if blur > 0:
            he, ihc = cv2.GaussianBlur(he, (0, 0), blur), cv2.GaussianBlur(ihc, (0, 0), blur)
        he, ihc = he - np.float32(he.mean()), ihc - np.float32(ihc.mean())
        h, w = he.shape
        return cls(he, ihc, hann(he.shape), np.array([(w - 1) / 2, (h - 1) / 2]), np.ones_like(he))

    def register(self, rotation: float) -> tuple[np.ndarray, float]:
        """Shift (x, y) at this level and the NCC of the registration, for one rotation."""
        derotated = pull_back(self.ihc, (0.0, 0.0), rotation, self.centre)
        sx, sy, _ = phase_correlation(self.he, derotated, self.window)
        shift = rotation_matrix(rotation) @ np.array([sx, sy])  # shift found in the derotated frame is R^-1 d
        valid = pull_back(self.ones, shift, rotation, self.centre) > 0.999
        if np.count_nonzero(valid) < valid.size // 4:  # a wild peak: too little in common to trust
            return shift, -1.0
        return shift, ncc(self.he, pull_back(self.ihc, shift, rotation, self.centre), valid)


def _best_rotation(coarse: _Level, fine: _Level, config: AlignConfig) -> float:
    """Grid search on the coarse level, then two parabolic refinements on the fine level."""
    if config.max_rotation == 0:
        return 0.0
    n = int(math.floor(config.max_rotation / config.rotation_step + 1e-9))
    grid = [k * config.rotation_step for k in range(-n, n + 1)]
    if grid[-1] < config.max_rotation - 1e-9:
        grid = [-config.max_rotation] + grid + [config.max_rotation]
    best = max(grid, key=lambda t: coarse.register(t)[1])
    step = config.rotation_step / 2
    for _ in range(2):
        lo, mid, hi = (fine.register(best + k * step)[1] for k in (-1, 0, 1))
        curvature = lo - 2 * mid + hi
        if curvature < 0:
            best += step * float(np.clip(0.5 * (lo - hi) / curvature, -1.0, 1.0))
        elif max(lo, hi) > mid:
            best += step if hi > lo else -step
        step /= 2
    return float(np.clip(best, -config.max_rotation, config.max_rotation))


def estimate_alignment(he_hema: np.ndarray, ihc_hema: np.ndarray, he_tissue: np.ndarray, ihc_tissue: np.ndarray,
                       config: AlignConfig = AlignConfig(), *, factor: int = 1,
                       full_shape: tuple[int, int] | None = None) -> Alignment:
    """Align two hematoxylin densities already reduced to the working resolution.

    Parameters
    ----------
    he_hema, ihc_hema : (h, w) float32 optical densities (rgb2hed units).
    he_tissue, ihc_tissue : (h, w) bool tissue masks at the same resolution.
    factor : the reduction from the full tile to these arrays (results are in full-resolution px).
    full_shape : (H, W) of the full tile (default ``factor`` times the arrays').

    Returns
    -------
    Alignment
    """
    shape = he_hema.shape
    if ihc_hema.shape != shape or he_tissue.shape != shape or ihc_tissue.shape != shape:
        return unscorable(f"H&E and IHC differ in size ({shape} vs {ihc_hema.shape})")
    full_shape = full_shape or (shape[0] * factor, shape[1] * factor)
    fractions = float(he_tissue.mean()), float(ihc_tissue.mean())
    if min(fractions) < config.min_tissue:
        return unscorable(f"too little tissue to align (H&E {fractions[0]:.1%}, IHC {fractions[1]:.1%}; "
                          f"needs {config.min_tissue:.0%})")
    if min(float(he_hema.std()), float(ihc_hema.std())) < 1e-4:
        return unscorable("no hematoxylin contrast to align on")
    fine = _Level.make(he_hema.astype(np.float32), ihc_hema.astype(np.float32), config.blur)
    coarse = _Level.make(reduce(he_hema.astype(np.float32), 2), reduce(ihc_hema.astype(np.float32), 2),
                         config.blur / 2) if min(shape) >= 64 else fine
    rotation = _best_rotation(coarse, fine, config)
    shift_w, similarity = fine.register(rotation)
    if similarity <= -1.0:
        return unscorable("no translation leaves enough of the tiles in common")
    valid = pull_back(fine.ones, shift_w, rotation, fine.centre) > 0.999
    moved_tissue = pull_back(ihc_tissue.astype(np.uint8), shift_w, rotation, fine.centre,
                             interpolation=cv2.INTER_NEAREST) > 0
    overlap = dice(he_tissue, moved_tissue, valid)
    # working px -> full px: a translation scales by the factor (the centres map onto each other)
    sx, sy = (float(v) * factor for v in shift_w)
    score = combined_score(similarity, overlap, math.hypot(sx, sy), rotation,
                           config.shift_tolerance_px(full_shape), config.rotation_tolerance)
    return Alignment("done", sx, sy, rotation, similarity, overlap, score)


def working_factor(shape: tuple[int, int], config: AlignConfig) -> int:
    """The integer reduction from a tile of ``shape`` to about ``config.work_size`` px a side."""
    return max(1, int(round(max(shape[:2]) / config.work_size)))


def align_pair(he_rgb: np.ndarray, ihc_hema: np.ndarray, ihc_rgb: np.ndarray,
               config: AlignConfig = AlignConfig()) -> Alignment:
    """Score one pair from the H&E RGB, the IHC hematoxylin density and the IHC RGB (for its tissue mask).

    Parameters
    ----------
    he_rgb, ihc_rgb : (H, W, 3) uint8 RGB.
    ihc_hema : (H, W) float32 hematoxylin optical density of the IHC (rgb2hed units, as in a shard).

    Returns
    -------
    Alignment, in full-resolution px.
    """
    if he_rgb.shape != ihc_rgb.shape or ihc_hema.shape != he_rgb.shape[:2]:
        return unscorable(f"H&E {he_rgb.shape} and IHC {ihc_rgb.shape} / {ihc_hema.shape} differ in size")
    factor = working_factor(he_rgb.shape, config)
    he_hema = reduce(stain_channel(he_rgb, HEMATOXYLIN), factor)
    return estimate_alignment(he_hema, reduce(np.asarray(ihc_hema, np.float32), factor),
                              tissue_region(reduce(he_rgb, factor)), tissue_region(reduce(ihc_rgb, factor)),
                              config, factor=factor, full_shape=he_rgb.shape[:2])
