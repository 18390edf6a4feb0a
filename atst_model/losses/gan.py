"""CycleGAN's losses: LSGAN adversarial, cycle consistency L1 + (1 - SSIM), identity.

Images are (B, 3, H, W) in [-1, 1] (the generators' tanh range).
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


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two image batches in [-1, 1] (computed on [0, 1]; Gaussian window, as Wang et al. 2004).

    Float32 inside whatever the autocast dtype: the variance terms cancel badly in bf16.
    """
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
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """ATST-Net's cycle term: L1 + (1 - SSIM)."""
    return F.l1_loss(reconstructed.float(), original.float()) + (1 - ssim(reconstructed, original))
