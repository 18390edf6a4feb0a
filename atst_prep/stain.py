"""Ruifrok & Johnston colour deconvolution (H-E-DAB) as pure numpy functions.

Units
-----
All stain channels are in the units of :func:`skimage.color.rgb2hed`: the
natural-log optical density of each RGB channel divided by ``-log(1e-6)``
(so a fully absorbing channel clipped at 1e-6 has density 1), unmixed with
:data:`HED_FROM_RGB` and clipped at zero. Keeping scikit-image's units means
every number in a shard can be checked against scikit-image directly.

Speed comes from the input being uint8: the optical density of a byte is one
of 256 values, so unmixing is three table look-ups and two additions per
output channel instead of a float64 log and a matrix product per pixel.

References
----------
A. C. Ruifrok and D. A. Johnston, "Quantification of histochemical staining
by color deconvolution", Anal. Quant. Cytol. Histol. 23(4):291-299, 2001.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Stain optical-density vectors, one row per stain (hematoxylin, eosin, DAB),
#: as in Ruifrok & Johnston (2001) and ``skimage.color.rgb_from_hed``.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
#: Its inverse, the unmixing matrix (``skimage.color.hed_from_rgb``).
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

#: Index of each stain in the last axis of an HED array.
HEMATOXYLIN, EOSIN, DAB = 0, 1, 2

#: Optical densities are scaled by this (``-log(1e-6)``), as in scikit-image.
LOG_ADJUST = -np.log(1e-6)
#: Rec. 709 luma weights of ``skimage.color.rgb2gray``.
GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])

# Optical density of each byte value, in scikit-image's units (float64).
_OD_OF_BYTE = -np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / LOG_ADJUST


def _as_rgb_uint8(rgb: np.ndarray) -> np.ndarray:
    """Check that ``rgb`` is an (H, W, 3) uint8 array; the one input check."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}"
        )
    return rgb


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density of each RGB channel, in scikit-image units.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array

    Returns
    -------
    (H, W, 3) float32 array, ``-log(max(I / 255, 1e-6)) / -log(1e-6)``, in [0, 1].
    """
    rgb = _as_rgb_uint8(rgb)
    return _OD_OF_BYTE.astype(np.float32)[rgb]


def _stain_tables(stain: int) -> np.ndarray:
    """(3, 256) float32 tables: byte value of channel c -> its share of ``stain``."""
    return (_OD_OF_BYTE[None, :] * HED_FROM_RGB[:, stain][:, None]).astype(np.float32)


_TABLES = {s: _stain_tables(s) for s in (HEMATOXYLIN, EOSIN, DAB)}


def stain_channel(rgb: np.ndarray, stain: int) -> np.ndarray:
    """One unmixed stain channel, equal to ``rgb2hed(rgb)[..., stain]``.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array
    stain : {HEMATOXYLIN, EOSIN, DAB}

    Returns
    -------
    (H, W) float32 array, optical density in scikit-image units, >= 0.
    """
    rgb = _as_rgb_uint8(rgb)
    t = _TABLES[stain]
    out = t[0][rgb[..., 0]]
    out += t[1][rgb[..., 1]]
    out += t[2][rgb[..., 2]]
    np.maximum(out, 0.0, out=out)
    return out


def dab_channel(rgb: np.ndarray) -> np.ndarray:
    """DAB optical density, (H, W) float32; equals ``stain_channel(rgb, DAB)``.

    The same arithmetic as :func:`dab_and_hematoxylin` (so a mask computed
    from either is the same to the bit), which is also faster than three
    numpy gathers: OpenCV's 3x3 colour transform is vectorised.
    """
    return dab_and_hematoxylin(rgb)[0]


def hematoxylin_channel(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density, (H, W) float32; see :func:`stain_channel`."""
    return stain_channel(rgb, HEMATOXYLIN)


def dab_and_hematoxylin(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DAB and hematoxylin densities in one pass (what prep stores); (H, W) float32 each.

    Same values as :func:`stain_channel`, computed with OpenCV: a per-channel
    table look-up to optical density, then one 3x3 colour transform (OpenCV's
    vectorised path; a 3x2 transform is ten times slower).
    """
    rgb = _as_rgb_uint8(rgb)
    od = cv2.LUT(rgb, _OD_LUT)  # (H, W, 3) float32 optical density per RGB channel
    unmixed = cv2.transform(od, _DAB_HEMA_ROWS)
    # clipping at zero also copies each channel out contiguously (cheaper than cv2.split)
    return np.maximum(unmixed[..., 0], 0.0), np.maximum(unmixed[..., 1], 0.0)


_OD_LUT = np.ascontiguousarray(np.repeat(_OD_OF_BYTE[None, :, None], 3, axis=2), dtype=np.float32)
_DAB_HEMA_ROWS = np.ascontiguousarray(HED_FROM_RGB.T[[DAB, HEMATOXYLIN, EOSIN]], dtype=np.float32)


def rgb_to_hed(rgb: np.ndarray) -> np.ndarray:
    """All three stain channels, (H, W, 3) float32; equals ``skimage.color.rgb2hed``."""
    return np.stack([stain_channel(rgb, s) for s in (HEMATOXYLIN, EOSIN, DAB)], axis=-1)


def dab_gray(dab: np.ndarray) -> np.ndarray:
    """Gray level of the DAB channel re-rendered alone as RGB.

    The public ATST-Net script renders the DAB channel back to RGB
    (``hed2rgb`` with hematoxylin and eosin set to zero) and takes
    ``rgb2gray`` of it; this is that composition in closed form:
    ``sum_c w_c * exp(-LOG_ADJUST * d * RGB_FROM_HED[DAB, c])``.

    Parameters
    ----------
    dab : (H, W) float array, DAB density in scikit-image units (>= 0).

    Returns
    -------
    (H, W) float32 array in (0, 1]; 1 where there is no DAB, darker with more.
    """
    dab = np.ascontiguousarray(dab, dtype=np.float32)
    gray = None
    for w, v in zip(GRAY_WEIGHTS, RGB_FROM_HED[DAB]):
        channel = cv2.exp(dab * np.float32(-LOG_ADJUST * v))  # OpenCV's exp is vectorised and exact to 1 ulp
        gray = channel * np.float32(w) if gray is None else cv2.scaleAdd(channel, float(w), gray)
    return gray


def dab_density_of_gray(gray: float) -> float:
    """Inverse of :func:`dab_gray` for one value (bisection; gray is monotone in d)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        g = float(np.sum(GRAY_WEIGHTS * np.exp(-LOG_ADJUST * mid * RGB_FROM_HED[DAB])))
        lo, hi = (mid, hi) if g > gray else (lo, mid)
    return 0.5 * (lo + hi)
