"""The differentiable nucleus count of ATST-Net's L5.

``soft_count`` integrates CPP-Net's density map over a soft mask: a count with
a gradient, where the public code counted under ``no_grad``. The density head
is trained so that its integral over any region is the number of nuclei
centred there (:func:`atst_model.cppnet.targets.density_map`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import CppNet


def density_of(model: CppNet, stains: torch.Tensor) -> torch.Tensor:
    """Density map (B, 1, H, W) for stain densities (B, C, H, W) of any size (reflect-padded inside)."""
    h, w = stains.shape[-2:]
    m = model.config.multiple
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        stains = F.pad(stains, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    return model.density(stains)[..., :h, :w]


def soft_count(model: CppNet, hema: torch.Tensor, soft_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Soft number of nuclei inside ``soft_mask``, (B,), differentiable in ``hema`` and ``soft_mask``.

    Parameters
    ----------
    model : a trained CppNet with ``in_channels == 1`` (hematoxylin).
    hema : (B, 1, H, W) or (B, H, W) hematoxylin optical density, rgb2hed units.
    soft_mask : same spatial size, values in [0, 1]; None counts the whole crop.
    """
    if hema.dim() == 3:
        hema = hema.unsqueeze(1)
    density = density_of(model, hema)
    if soft_mask is not None:
        density = density * (soft_mask if soft_mask.dim() == 4 else soft_mask.unsqueeze(1))
    return density.flatten(1).sum(dim=1)
