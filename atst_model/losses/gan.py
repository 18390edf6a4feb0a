"""CycleGAN's losses: LSGAN adversarial, cycle consistency L1 + (1 - SSIM), identity.

Images are (B, 3, H, W) in [-1, 1] (the generators' tanh range).

The cycle term's SSIM (:func:`ssim`) is Wang et al. (2004)'s, and its mean is
scikit-image's ::

    structural_similarity(a01, b01, gaussian_weights=True, sigma=1.5,
                          use_sample_covariance=False, data_range=1, channel_axis=...)

of the images mapped to ``a01 = (a + 1) / 2`` in [0, 1]: an 11x11 Gaussian
window (sigma 1.5, truncated at 3.5 sigma as scipy's), population (Gaussian-
weighted, not ``N - 1``) variances and covariance, ``C1 = 0.01**2``,
``C2 = 0.03**2``. The window is applied without padding, so the SSIM map
(:func:`ssim_map`) exists only at the ``(H - 10) x (W - 10)`` centres whose
window lies inside the image; scikit-image pads by reflection but crops
``(win_size - 1) // 2 = 5`` px from each side before averaging, so the two
means agree (to float32 rounding, ~3e-5 on real tiles; tests/test_gan_losses.py).
It is *not* the evaluation SSIM (:func:`atst_model.metrics.image.ssim`:
7x7 uniform window, sample covariance, uint8 data range 255), which gives
different numbers on the same pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss of a PatchGAN map against the all-real (1) or all-fake (0) target."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction.float(), target.float())


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).to(dtype).contiguous()


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM map ``(B, C, H - window + 1, W - window + 1)`` of two image batches in [-1, 1] (module docstring).

    Computed on [0, 1] in float32 whatever the autocast dtype (autocast is
    switched off inside): the variance terms cancel badly in bf16.
    """
    with torch.autocast(a.device.type, enabled=False):
        a = (a.float() + 1) / 2
        b = (b.float() + 1) / 2
        c = a.shape[1]
        w = _gaussian_window(window, sigma, c, a.device, a.dtype)
        mu_a = F.conv2d(a, w, groups=c)
        mu_b = F.conv2d(b, w, groups=c)
        var_a = F.conv2d(a * a, w, groups=c) - mu_a**2
        var_b = F.conv2d(b * b, w, groups=c) - mu_b**2
        cov = F.conv2d(a * b, w, groups=c) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two image batches in [-1, 1]: the mean of :func:`ssim_map` (float32).

    Per image, scikit-image's Gaussian-window SSIM of the images in [0, 1]
    (module docstring); over a batch, the mean of the per-image values.
    """
    with torch.autocast(a.device.type, enabled=False):
        return ssim_map(a, b, window, sigma).mean()


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """ATST-Net's cycle term: L1 (mean absolute error in [-1, 1]) + (1 - :func:`ssim`)."""
    return F.l1_loss(reconstructed.float(), original.float()) + (1 - ssim(reconstructed, original))
