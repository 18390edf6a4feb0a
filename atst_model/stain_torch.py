"""Differentiable, batched twins of prep's stain unmixing and of Eq. 1 (the DAB mask).

The auxiliary losses compare the fake IHC ``FI = G1(H&E)`` with targets that
prep computed on the real IHC (:mod:`atst_prep.stain`, :mod:`atst_prep.mask`).
For the comparison to mean anything, ``M'`` must be the *same function* of
the image as prep's ``M``; this module is that function in PyTorch, with a
soft threshold and soft morphology so that gradients reach the generator.

Conventions
-----------
Images come in as the generator's tanh output: (B, 3, H, W) in [-1, 1],
RGB. They are mapped to intensities ``I = (x + 1) / 2`` and to optical
density in scikit-image's units, ``OD = -log(max(I, 1e-6)) / -log(1e-6)``
(so a byte image ``x = b / 127.5 - 1`` gives exactly prep's densities).
The clamp at 1e-6 keeps ``OD`` and its gradient finite (|dOD/dI| <= 1e6 /
13.8). All stain math runs in float32 with autocast disabled, whatever the
caller's autocast: bf16 keeps ~3 significant digits, too few for a
threshold on gray levels near 1. Gradients flow back to a bf16 input.

``soft_mask`` follows :func:`atst_prep.mask.mask_from_dab` step by step:

====================================  ==================================================
prep (numpy/OpenCV, hard)             here (torch)
====================================  ==================================================
``dab_gray`` (closed form)            :func:`dab_gray`, same formula
9x9 Gaussian, sigma 1, replicate      :func:`gaussian_blur`, separable, replicate
Otsu on the image (256 bins)          :func:`otsu_threshold`, same histogram rule,
                                      per image, on the detached gray
``gray <= T`` (T capped by min_dab)   the same in value; the gradient of
                                      ``sigmoid((T - gray) / temperature)``
erode / dilate 3x3 (cv2 borders)      min / max pooling (same borders)
closing by disk(r), reflect           exact disk max/min with sub-gradients
====================================  ==================================================

The value of ``soft_mask`` *is* the hard mask (a straight-through estimator):
a fake equal to the real IHC gets exactly prep's M, so every auxiliary loss
is zero at the truth, while the gradient comes from the soft pipeline. The
temperature therefore shapes only the gradient, and can be wide.
Prep stores M per fixed training window (:func:`atst_prep.mask.window_masks`)
so that the target and M' are Eq. 1 on the same extent: Otsu's threshold of a
crop is not the threshold of its tile.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from atst_prep.mask import MaskConfig
from atst_prep.morphology import disk_half_widths
from atst_prep.stain import DAB, GRAY_WEIGHTS, HED_FROM_RGB, HEMATOXYLIN, LOG_ADJUST, RGB_FROM_HED
from atst_prep.stain import dab_gray as _dab_gray_np

__all__ = ["optical_density", "unmix", "dab_gray", "gaussian_blur", "otsu_threshold", "soft_mask", "hard_mask",
           "dilate_disk", "erode_disk", "closing_disk", "clamp_min_straight_through", "MIN_INTENSITY",
           "DEFAULT_TEMPERATURE"]

#: Width of the soft threshold's gradient in gray units (see :func:`soft_mask`), chosen in
#: ``benchmarks/aux_balance.py`` (RESULTS.md): at 0.2 a white pixel (gray 1, Otsu's T ~ 0.7 on
#: real IHC) still gets 60 % of the peak slope, so L1-L3 can grow a region where the fake is
#: blank, and the mask terms stay within 10x of the others (at 0.02 they passed almost nothing).
DEFAULT_TEMPERATURE = 0.2

#: Intensities are clamped here before the log, as in ``skimage.color.rgb2hed``.
MIN_INTENSITY = 1e-6

# unmixing coefficients of (DAB, hematoxylin) per RGB channel, rounded to float32 as prep's OpenCV transform
_UNMIX = [[float(np.float32(HED_FROM_RGB[c, s])) for c in range(3)] for s in (DAB, HEMATOXYLIN)]
# gray = sum_c w_c exp(k_c * d): the DAB row of the stain matrix, pre-multiplied by -LOG_ADJUST
_GRAY_EXP = [(float(w), float(-LOG_ADJUST * v)) for w, v in zip(GRAY_WEIGHTS, RGB_FROM_HED[DAB])]


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def optical_density(rgb: torch.Tensor) -> torch.Tensor:
    """Optical density of each channel, (B, 3, H, W) float32 in [0, 1], rgb2hed units.

    Parameters
    ----------
    rgb : (B, 3, H, W) tensor in [-1, 1] (tanh output; -1 = black, 1 = white).
    """
    with torch.autocast(rgb.device.type, enabled=False):
        intensity = (_f32(rgb) + 1.0) * 0.5
        return torch.log(intensity.clamp_min(MIN_INTENSITY)) * (-1.0 / LOG_ADJUST)


def unmix(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DAB and hematoxylin densities of images in [-1, 1]; twin of :func:`atst_prep.stain.dab_and_hematoxylin`.

    Parameters
    ----------
    rgb : (B, 3, H, W) tensor in [-1, 1], any float dtype.

    Returns
    -------
    dab, hema : (B, 1, H, W) float32, optical density in rgb2hed units, >= 0
        (clipped at zero as prep clips). The clip is straight-through: its
        gradient is 1 below zero too, so a pixel whose DAB unmixes negative
        (white, pure hematoxylin) still learns which way makes it browner.
    """
    od = optical_density(rgb)
    with torch.autocast(rgb.device.type, enabled=False):
        r, g, b = od[:, 0:1], od[:, 1:2], od[:, 2:3]
        # elementwise, not a matmul/conv: those may run in TF32 on a GPU (10 mantissa bits)
        dab, hema = (clamp_min_straight_through(r * k[0] + g * k[1] + b * k[2]) for k in _UNMIX)
    return dab, hema


def clamp_min_straight_through(x: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """``x.clamp_min(floor)`` in value, identity in gradient (a straight-through clip)."""
    if not x.requires_grad:
        return x.clamp_min(floor)
    return x + (x.clamp_min(floor) - x).detach()


def dab_gray(dab: torch.Tensor) -> torch.Tensor:
    """Gray level of the DAB channel rendered alone; twin of :func:`atst_prep.stain.dab_gray`.

    Parameters
    ----------
    dab : (B, 1, H, W) DAB density (rgb2hed units, >= 0).

    Returns
    -------
    (B, 1, H, W) float32 in (0, 1]: 1 without DAB, darker with more.
    """
    with torch.autocast(dab.device.type, enabled=False):
        dab = _f32(dab)
        gray = None
        for w, k in _GRAY_EXP:
            term = torch.exp(dab * k) * w
            gray = term if gray is None else gray + term
        return gray


@functools.lru_cache(maxsize=64)
def _gaussian_kernel(sigma: float) -> torch.Tensor:
    # the kernel of cv2.GaussianBlur / skimage.filters.gaussian (truncate 4 sigma), normalised to 1
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, (2 * round(4 sigma) + 1) taps, replicate border (as prep's ``gaussian_blur``).

    Parameters
    ----------
    image : (B, 1, H, W) float tensor.
    sigma : float, px; 0 returns the input.
    """
    if sigma == 0:
        return image
    k = _gaussian_kernel(float(sigma)).tolist()
    r = (len(k) - 1) // 2
    h, w = image.shape[-2:]
    with torch.autocast(image.device.type, enabled=False):
        # shifted sums, not conv2d: cuDNN convolutions may run in TF32, and a threshold on
        # gray levels near 1 needs float32 (the taps are few: 2 x 9 multiply-adds per pixel)
        x = F.pad(_f32(image), (r, r, r, r), mode="replicate")
        x = sum(x[..., :, i:i + w] * k[i] for i in range(len(k)))
        return sum(x[..., i:i + h, :] * k[i] for i in range(len(k)))


def otsu_threshold(gray: torch.Tensor, nbins: int = 256) -> torch.Tensor:
    """Otsu's threshold per image, equal to :func:`atst_prep.mask.otsu_threshold` (no gradient).

    Same rule as prep: ``nbins`` equal bins between each image's minimum and
    maximum (the maximum goes in the last bin), the threshold is the centre
    of the bin maximising the between-class variance (first one on ties), a
    constant image returns its value. Computed on the GPU, batched.

    Parameters
    ----------
    gray : (B, 1, H, W) float tensor.
    nbins : int

    Returns
    -------
    (B,) float64 thresholds, in the units of ``gray``.
    """
    g = _f32(gray.detach()).flatten(1)
    b = g.shape[0]
    lo, hi = g.amin(dim=1), g.amax(dim=1)
    span = (hi.double() - lo.double())
    flat = span <= 0
    scale = (nbins / torch.where(flat, torch.ones_like(span), span)).float()  # float32, as prep's factor
    idx = torch.floor((g - lo[:, None]) * scale[:, None]).long().clamp_(0, nbins - 1)
    idx += torch.arange(b, device=g.device)[:, None] * nbins
    counts = torch.bincount(idx.flatten(), minlength=b * nbins).view(b, nbins).double()
    centers = lo.double()[:, None] + (torch.arange(nbins, device=g.device, dtype=torch.float64) + 0.5) \
        * (span / nbins)[:, None]
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    m1 = (counts * centers).cumsum(1) / w1
    m2 = (counts * centers).flip(1).cumsum(1).flip(1) / w2
    var = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    best = torch.nan_to_num(var, nan=-math.inf).argmax(dim=1)
    t = centers.gather(1, best[:, None])[:, 0]
    return torch.where(flat, lo.double(), t)


def _sym_index(n: int, r: int, device) -> torch.Tensor:
    # numpy's "symmetric" padding (abc|cba), which torch's F.pad does not offer
    i = torch.arange(-r, n + r, device=device)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - 1 - i, i).clamp_(0, n - 1)


def _pad_symmetric(x: torch.Tensor, r: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = x.index_select(-2, _sym_index(h, r, x.device))
    return x.index_select(-1, _sym_index(w, r, x.device))


class _DiskMaxValid(torch.autograd.Function):
    """Max over ``disk(r)`` of a (N, C, H + 2r, W + 2r) input, 'valid' output (N, C, H, W).

    Exact: the disk is the union over row offsets ``dy`` of horizontal
    segments of half-width ``w(dy)``. The horizontal maxima are grown one
    pixel at a time (w rises as |dy| falls, so one running maximum serves
    every row pair), then combined over rows: ~4r elementwise maxima instead
    of (2r + 1)^2. The argmax of every output is tracked so the backward pass
    is the max's sub-gradient (as ``max_pool2d``'s), stored as one index
    tensor rather than the ~4r intermediates autograd would keep.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, radius: int) -> torch.Tensor:
        n, c, hp, wp = x.shape
        r = radius
        h, w = hp - 2 * r, wp - 2 * r
        flat = torch.arange(hp * wp, device=x.device, dtype=torch.int32).view(1, 1, hp, wp)
        half = disk_half_widths(r)
        val = x[..., r:r + w]                     # running horizontal max, (N, C, Hp, W)
        arg = flat[..., r:r + w].expand(n, c, hp, w)
        grown = 0
        out = out_arg = None
        for dy in range(r, -1, -1):
            while grown < half[dy]:
                grown += 1
                for s in (r - grown, r + grown):
                    cand, cand_arg = x[..., s:s + w], flat[..., s:s + w]
                    take = cand > val
                    val, arg = torch.where(take, cand, val), torch.where(take, cand_arg, arg)
            for row in ((r - dy, r + dy) if dy else (r,)):
                v, a = val[..., row:row + h, :], arg[..., row:row + h, :]
                if out is None:
                    out, out_arg = v, a
                else:
                    take = v > out
                    out, out_arg = torch.where(take, v, out), torch.where(take, a, out_arg)
        out_arg = out_arg.expand(n, c, h, w)
        ctx.save_for_backward(out_arg)
        ctx.in_shape = x.shape
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad):
        (arg,) = ctx.saved_tensors
        n, c, hp, wp = ctx.in_shape
        g = grad.new_zeros(n, c, hp * wp)
        g.scatter_add_(2, arg.reshape(n, c, -1).long(), grad.reshape(n, c, -1))
        return g.view(n, c, hp, wp), None


def _disk_max_plain(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The forward of :class:`_DiskMaxValid` without argmax bookkeeping (no gradient): hard masks."""
    r = radius
    h, w = x.shape[-2] - 2 * r, x.shape[-1] - 2 * r
    half = disk_half_widths(r)
    val, grown, out = x[..., r:r + w], 0, None
    for dy in range(r, -1, -1):
        while grown < half[dy]:
            grown += 1
            val = torch.maximum(torch.maximum(val, x[..., r - grown:r - grown + w]), x[..., r + grown:r + grown + w])
        for row in ((r - dy, r + dy) if dy else (r,)):
            v = val[..., row:row + h, :]
            out = v if out is None else torch.maximum(out, v)
    return out.contiguous()


def _disk_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _DiskMaxValid.apply(x, radius)
    return _disk_max_plain(x, radius)


def dilate_disk(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation by ``disk(radius)`` of a pre-padded (N, C, H + 2r, W + 2r) tensor -> (N, C, H, W)."""
    return x if radius == 0 else _disk_max(x, radius)


def erode_disk(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey erosion by ``disk(radius)`` of a pre-padded tensor (the dual of :func:`dilate_disk`)."""
    return x if radius == 0 else -_disk_max(-x, radius)


def closing_disk(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Closing by ``disk(radius)`` with symmetric padding; twin of :func:`atst_prep.morphology.binary_closing_disk`.

    Parameters
    ----------
    x : (N, C, H, W) float tensor (a soft mask in [0, 1]).
    radius : int >= 0, px.
    """
    if radius == 0:
        return x
    return erode_disk(_pad_symmetric(dilate_disk(_pad_symmetric(x, radius), radius), radius), radius)


@functools.lru_cache(maxsize=64)
def _gray_of_min_dab(min_dab: float) -> float:
    # prep's own float32 value of the floor (computed once per config, not per step)
    return float(_dab_gray_np(np.float32([min_dab]))[0])


def _morphology(m: torch.Tensor, config: MaskConfig) -> torch.Tensor:
    """Eq. 1 after the threshold: erosion and dilation (3x3, cv2 borders), then the disk closing."""
    k = config.morph_kernel
    for _ in range(config.erode_iterations):   # cv2.erode: outside counts as foreground
        m = -F.max_pool2d(-m, k, stride=1, padding=k // 2)
    for _ in range(config.dilate_iterations):  # cv2.dilate: outside counts as background
        m = F.max_pool2d(m, k, stride=1, padding=k // 2)
    return closing_disk(m, config.closing_radius)


def _gray_and_threshold(dab: torch.Tensor, config: MaskConfig) -> tuple[torch.Tensor, torch.Tensor]:
    gray = gaussian_blur(dab_gray(dab), config.sigma)
    t = otsu_threshold(gray, config.otsu_bins)
    if config.min_dab > 0:  # gray falls as DAB rises, so the floor on DAB is a ceiling on gray
        t = t.clamp_max(_gray_of_min_dab(config.min_dab))
    return gray, t.float().view(-1, 1, 1, 1)


def hard_mask(dab: torch.Tensor, config: MaskConfig = MaskConfig()) -> torch.Tensor:
    """Eq. 1 in torch, batched, no gradient: (B, 1, H, W) float32 in {0, 1}.

    Equal to prep's :func:`atst_prep.mask.mask_from_dab` on every image up to
    float rounding of the gray levels at Otsu's threshold (a few pixels, if any).
    """
    with torch.no_grad(), torch.autocast(dab.device.type, enabled=False):
        gray, t = _gray_and_threshold(dab, config)
        return _morphology((gray <= t).float(), config)


def soft_mask(dab: torch.Tensor, config: MaskConfig = MaskConfig(),
              temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Eq. 1 with a gradient: the hard mask in value, a soft mask's gradient (straight-through).

    Parameters
    ----------
    dab : (B, 1, H, W) DAB density, rgb2hed units (from :func:`unmix`).
    config : MaskConfig
        The parameters prep used for the target masks (shard ``params["mask"]``).
    temperature : float
        Width of the gradient's threshold in gray units (gray of the DAB-only
        rendering, in (0, 1]; on real IHC the gray levels span ~0.3-1 and
        Otsu's threshold sits near 0.7).

    Returns
    -------
    (B, 1, H, W) float32. Its *value* is :func:`hard_mask`, i.e. prep's Eq. 1
    (binary): the real IHC as the fake gives M' = M and a zero mask loss,
    whatever the temperature. Its *gradient* is that of the soft pipeline
    ``sigmoid((T - gray) / temperature)`` followed by the same erosion,
    dilation and closing as min/max pooling (each output routes its gradient
    to the pixel that sets it, the one nearest to turning). ``T`` is Otsu's
    threshold of the detached gray, per image (Otsu has no useful gradient).
    Without autograd (no grad mode, or an input that needs none) only the
    hard mask is computed.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (gray units), got {temperature}")
    if not (torch.is_grad_enabled() and dab.requires_grad):
        return hard_mask(dab, config)
    with torch.autocast(dab.device.type, enabled=False):
        gray, t = _gray_and_threshold(dab, config)
        with torch.no_grad():
            hard = _morphology((gray <= t).float(), config)
        soft = _morphology(torch.sigmoid((t - gray) * (1.0 / temperature)), config)
        return hard + (soft - soft.detach())
