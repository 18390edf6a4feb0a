"""Paired image metrics on uint8 RGB tiles at full resolution: PSNR, SSIM, CSS.

The conventions are those of the published H&E->IHC tables (the ones
``atst eval`` reports; README.md, "Evaluation"):

=====================  ===============================================================
metric                 convention
=====================  ===============================================================
:func:`psnr`           ``skimage.metrics.peak_signal_noise_ratio(real, fake,
                       data_range=255)``; identical images give ``inf``
:func:`ssim`           ``skimage.metrics.structural_similarity(real, fake,
                       channel_axis=2, data_range=255)`` (7x7 uniform window,
                       sample covariance). The old ``multichannel`` keyword
                       is silently ignored by current scikit-image and must not be
                       used: it would compute a 3-D SSIM over the colour axis.
:func:`css`            contrast-structure term of SSIM as ``sewar.full_ref.ssim``
                       (0.4.10, ``ws=5``) returns it as its second value
=====================  ===============================================================

CSS in detail (sewar 0.4.10: ``fspecial(UNIFORM, 5)`` = ``ones((5, 5)) / 25``,
``scipy.signal.convolve2d(..., mode='valid')``): for every channel and every
*valid* 5x5 window (no padding; ``(H - 4) * (W - 4)`` windows)::

    mu_a = mean(a),  var_a = mean(a**2) - mu_a**2,  cov = mean(a*b) - mu_a*mu_b
    cs   = (2*cov + C2) / (var_a + var_b + C2),     C2 = (0.03 * 255)**2

i.e. the *population* (biased, divide-by-25) variance and covariance, not the
``N - 1`` estimator scikit-image's SSIM uses. CSS is the mean of ``cs`` over the
valid windows of a channel, then the mean over the three channels. Only
contrast and structure enter it, so a global brightness shift leaves it at 1.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["psnr", "ssim", "css", "CSS_WINDOW", "CSS_K2"]

#: Side of the uniform window of :func:`css` (sewar's ``ws``).
CSS_WINDOW = 5
#: ``K2`` of SSIM; ``C2 = (K2 * 255) ** 2``.
CSS_K2 = 0.03
_DATA_RANGE = 255.0


def _check_pair(fake: np.ndarray, real: np.ndarray, name: str, min_side: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (fake, real) pair of uint8 RGB images; returns them as arrays."""
    fake = np.asarray(fake)
    real = np.asarray(real)
    for label, img in (("fake", fake), ("real", real)):
        if img.dtype != np.uint8:
            raise ValueError(f"{name}: {label} must be uint8 RGB in [0, 255], got dtype {img.dtype}")
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"{name}: {label} must have shape (H, W, 3), got {img.shape}")
    if fake.shape != real.shape:
        raise ValueError(f"{name}: fake and real shapes differ: {fake.shape} vs {real.shape}")
    if min(fake.shape[:2]) < min_side:
        raise ValueError(f"{name}: images must be at least {min_side}x{min_side} px, got {fake.shape[:2]}")
    return fake, real


def _box_valid(x: np.ndarray) -> np.ndarray:
    """5x5 window means at the centres whose window lies inside ``x`` (float64)."""
    h = CSS_WINDOW // 2
    # the interior of a centred box filter equals convolve2d(..., mode='valid')
    return uniform_filter(x, size=CSS_WINDOW, mode="reflect")[h:-h, h:-h]


def psnr(fake: np.ndarray, real: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, scikit-image's convention.

    Parameters
    ----------
    fake, real : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB images of the same shape, at full resolution.

    Returns
    -------
    float
        ``10 * log10(255**2 / MSE)`` with the MSE over all pixels and channels
        in float64; ``inf`` for identical images. Higher is better.

    Raises
    ------
    ValueError
        If an image is not uint8 ``(H, W, 3)`` or the shapes differ.
    """
    fake, real = _check_pair(fake, real, "psnr")
    if np.array_equal(fake, real):
        return float("inf")
    return float(peak_signal_noise_ratio(real, fake, data_range=_DATA_RANGE))


def ssim(fake: np.ndarray, real: np.ndarray) -> float:
    """Mean structural similarity, scikit-image's convention.

    Parameters
    ----------
    fake, real : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB images of the same shape, at least 7x7 px.

    Returns
    -------
    float
        ``structural_similarity(real, fake, channel_axis=2, data_range=255)``:
        7x7 uniform window, sample covariance, per-channel mean SSIM averaged
        over the channels. 1 for identical images. Higher is better.

    Raises
    ------
    ValueError
        If an image is not uint8 ``(H, W, 3)``, is smaller than 7x7, or the
        shapes differ.
    """
    fake, real = _check_pair(fake, real, "ssim", min_side=7)
    return float(structural_similarity(real, fake, channel_axis=2, data_range=_DATA_RANGE))


def css(fake: np.ndarray, real: np.ndarray) -> float:
    """Contrast-structure similarity (the ``cs`` term of SSIM), sewar's convention.

    See the module docstring for the exact formula: 5x5 uniform window over
    the valid windows only, population (divide-by-25) variances and
    covariance, ``C2 = (0.03 * 255)**2``, mean per channel then over channels.
    Symmetric in ``fake`` and ``real``.

    Parameters
    ----------
    fake, real : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB images of the same shape, at least 5x5 px.

    Returns
    -------
    float
        CSS in ``[-1, 1]``; 1 for identical images (or images that differ by a
        constant per channel). Higher is better.

    Raises
    ------
    ValueError
        If an image is not uint8 ``(H, W, 3)``, is smaller than 5x5, or the
        shapes differ.
    """
    fake, real = _check_pair(fake, real, "css", min_side=CSS_WINDOW)
    c2 = (CSS_K2 * _DATA_RANGE) ** 2
    values = []
    for c in range(3):
        a = fake[..., c].astype(np.float64)
        b = real[..., c].astype(np.float64)
        mu_a, mu_b = _box_valid(a), _box_valid(b)
        var_a = _box_valid(a * a) - mu_a * mu_a
        var_b = _box_valid(b * b) - mu_b * mu_b
        cov = _box_valid(a * b) - mu_a * mu_b
        values.append(np.mean((2.0 * cov + c2) / (var_a + var_b + c2)))
    return float(np.mean(values))
