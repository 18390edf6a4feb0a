"""The DAB mask of ATST-Net, Eq. 1: ``M = Closing_r(Otsu(G_sigma(ColorDeconv(IHC))))``.

:func:`dab_mask` reproduces the public ATST-Net preparation script step by
step, with fast equivalents:

==========================================  ==========================================
public script (scikit-image, float64)       here (numpy/OpenCV, float32)
==========================================  ==========================================
``rgb2hed`` -> DAB channel                  :func:`atst_prep.stain.dab_channel` (tables)
``hed2rgb`` of DAB alone -> ``rgb2gray``    :func:`atst_prep.stain.dab_gray` (closed form)
``gaussian(sigma=1)`` (9x9, nearest)        ``cv2.GaussianBlur``, replicate border
``threshold_otsu``, foreground ``<= T``     :func:`otsu_threshold` (same histogram)
``cv2.erode`` / ``cv2.dilate`` 3x3 x2       the same OpenCV calls
``closing(disk(r))`` (reflect border)       :func:`atst_prep.morphology.binary_closing_disk`
==========================================  ==========================================

One deliberate difference: the public script thresholds every tile, so a tile
with no DAB at all is split by Otsu into two classes of noise. Here a pixel is
foreground only if its DAB density also reaches ``min_dab`` (in the units of
:mod:`atst_prep.stain`), so blank and DAB-negative tiles give an empty mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from .morphology import binary_closing_disk
from .stain import dab_channel, dab_density_of_gray, dab_gray


@dataclass(frozen=True)
class MaskConfig:
    """Parameters of Eq. 1; the defaults are the public ATST-Net script's.

    Attributes
    ----------
    sigma : float
        Gaussian sigma in pixels (the kernel is truncated at 4 sigma, as in
        ``skimage.filters.gaussian``).
    otsu_bins : int
        Histogram bins for Otsu's threshold.
    morph_kernel : int
        Side of the square structuring element of the erosion and dilation.
    erode_iterations, dilate_iterations : int
        Iterations of each (erosion first: removes specks, then regrows).
    closing_radius : int
        Radius ``r`` in pixels of the closing disk; larger values tolerate
        larger H&E/IHC misalignment. The public script uses 30 at 1024 px.
    min_dab : float
        DAB optical density (``rgb2hed`` units) below which a pixel is never
        foreground, however Otsu splits the tile. 0 disables the floor.
    """

    sigma: float = 1.0
    otsu_bins: int = 256
    morph_kernel: int = 3
    erode_iterations: int = 2
    dilate_iterations: int = 2
    closing_radius: int = 30
    min_dab: float = 0.03

    def __post_init__(self) -> None:
        problems = []
        if not (0.0 <= self.sigma <= 20.0):
            problems.append(f"sigma must be in [0, 20], got {self.sigma}")
        if not (2 <= self.otsu_bins <= 65536):
            problems.append(f"otsu_bins must be in [2, 65536], got {self.otsu_bins}")
        if self.morph_kernel < 1 or self.morph_kernel % 2 == 0:
            problems.append(f"morph_kernel must be a positive odd integer, got {self.morph_kernel}")
        for name in ("erode_iterations", "dilate_iterations"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not (0 <= self.closing_radius <= 256):
            problems.append(f"closing_radius must be in [0, 256] px, got {self.closing_radius}")
        if not (0.0 <= self.min_dab < 1.0):
            problems.append(f"min_dab must be in [0, 1), got {self.min_dab}")
        if problems:
            raise ValueError("invalid mask parameters: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def otsu_threshold(image: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold, equal to ``skimage.filters.threshold_otsu``.

    The histogram has ``nbins`` equal bins between the image's minimum and
    maximum and the threshold is a bin centre, as in scikit-image; a constant
    image returns its value.

    Parameters
    ----------
    image : (H, W) float32 array
    nbins : int

    Returns
    -------
    float
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    lo, hi = cv2.minMaxLoc(image)[:2]
    if hi <= lo:
        return float(lo)
    scaled = (image - np.float32(lo)) * np.float32(nbins / (hi - lo))
    counts = cv2.calcHist([scaled], [0], None, [nbins], [0, nbins]).ravel().astype(np.float64)
    counts[-1] += image.size - counts.sum()  # the maximum itself falls past the last bin
    centers = lo + (np.arange(nbins) + 0.5) * ((hi - lo) / nbins)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1 = np.cumsum(counts * centers) / weight1
        mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[int(np.nanargmax(variance12))])


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur as ``skimage.filters.gaussian(image, sigma)`` (truncate 4, nearest)."""
    if sigma == 0:
        return image
    radius = int(4.0 * sigma + 0.5)
    size = 2 * radius + 1
    return cv2.GaussianBlur(image, (size, size), sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def mask_from_dab(dab: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """Eq. 1 from an already unmixed DAB channel.

    Parameters
    ----------
    dab : (H, W) float32 array, DAB optical density (``rgb2hed`` units).
    config : MaskConfig

    Returns
    -------
    (H, W) bool array, True where the IHC is DAB-positive.
    """
    return mask_from_gray(dab_gray(dab), config)


def mask_from_gray(gray: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """Eq. 1 from the DAB channel's gray rendering, :func:`atst_prep.stain.dab_gray` of it (a per-pixel
    function, so the gray of a window is the window of the tile's gray); see :func:`mask_from_dab`."""
    gray = gaussian_blur(np.ascontiguousarray(gray), config.sigma)
    threshold = otsu_threshold(gray, config.otsu_bins)
    if config.min_dab > 0:
        # gray falls as DAB rises, so the floor on DAB is a ceiling on gray
        threshold = min(threshold, float(dab_gray(np.float32([config.min_dab]))[0]))
    mask = (gray <= np.float32(threshold)).view(np.uint8)
    if not mask.any():
        return mask.view(bool)
    kernel = np.ones((config.morph_kernel, config.morph_kernel), np.uint8)
    if config.erode_iterations:
        mask = cv2.erode(mask, kernel, iterations=config.erode_iterations)
    if config.dilate_iterations:
        mask = cv2.dilate(mask, kernel, iterations=config.dilate_iterations)
    return binary_closing_disk(mask.view(bool), config.closing_radius)


def dab_mask(ihc: np.ndarray, config: MaskConfig = MaskConfig()) -> np.ndarray:
    """Eq. 1 on an IHC image: the mask of strongly DAB-stained tissue.

    Parameters
    ----------
    ihc : (H, W, 3) uint8 RGB array
    config : MaskConfig

    Returns
    -------
    (H, W) bool array.

    Examples
    --------
    >>> from skimage import data
    >>> m = dab_mask(data.immunohistochemistry(), MaskConfig(closing_radius=5))
    >>> m.shape, m.dtype
    ((512, 512), dtype('bool'))
    """
    return mask_from_dab(dab_channel(ihc), config)


def window_origins(height: int, width: int, window: int, stride: int) -> np.ndarray:
    """Top-left corners (y, x) of the fixed training windows of a tile, row-major.

    A grid of ``window`` px squares every ``stride`` px, plus one flush with
    the bottom and right edges when the grid does not reach them, so every
    pixel lies in some window. A tile smaller than the window has none.

    Returns
    -------
    (N, 2) int32 array.

    Examples
    --------
    >>> window_origins(1024, 1024, 512, 256).tolist()[:4]
    [[0, 0], [0, 256], [0, 512], [256, 0]]
    >>> len(window_origins(1024, 1024, 512, 512)), len(window_origins(300, 300, 512, 256))
    (4, 0)
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1 px, got {window} and {stride}")

    def axis(n: int) -> list[int]:
        if n < window:
            return []
        starts = list(range(0, n - window + 1, stride))
        return starts if starts[-1] == n - window else starts + [n - window]

    ys, xs = axis(height), axis(width)
    return np.array([(y, x) for y in ys for x in xs], np.int32).reshape(-1, 2)


def window_masks(dab: np.ndarray, origins: np.ndarray, window: int, config: MaskConfig = MaskConfig(), *,
                 gray: np.ndarray | None = None) -> np.ndarray:
    """Eq. 1 of each training window on its own: the auxiliary losses' target masks.

    The fake's mask M' is Eq. 1 of the crop the generator saw, with Otsu's
    threshold of that crop; a target cut from the tile's mask would use the
    tile's threshold instead and differ wherever the staining is uneven. So
    prep stores Eq. 1 per fixed window, the same function on the same extent.

    Parameters
    ----------
    dab : (H, W) float32 DAB density of the tile.
    origins : (N, 2) window corners (y, x) from :func:`window_origins`.
    window : side of the windows, px.
    gray : ``dab_gray(dab)`` if already computed (the tile's mask needs it too).

    Returns
    -------
    (N, window, window) bool array; ``out[i]`` is ``mask_from_dab`` of the window at ``origins[i]``.
    """
    gray = dab_gray(dab) if gray is None else gray  # once for the tile, not once per overlapping window
    out = np.zeros((len(origins), window, window), bool)
    for i, (y, x) in enumerate(np.asarray(origins)):
        out[i] = mask_from_gray(gray[y:y + window, x:x + window], config)
    return out


__all__ = ["MaskConfig", "dab_mask", "mask_from_dab", "mask_from_gray", "otsu_threshold", "gaussian_blur", "dab_density_of_gray",
           "window_origins", "window_masks"]
