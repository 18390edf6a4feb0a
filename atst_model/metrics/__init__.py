"""Evaluation metrics with the published tables' conventions (stated in each module; README.md, "Evaluation").

Paired image metrics on uint8 RGB (:mod:`.image`): :func:`psnr`, :func:`ssim`,
:func:`css`. Feature-distribution metrics on precomputed features
(:mod:`.distribution`): :func:`frechet_distance` (FID),
:func:`kernel_inception_distance` / :func:`kid_x1000` (KID), :func:`phv` /
:func:`phv_per_layer` (PHV).
"""

from .distribution import frechet_distance, kernel_inception_distance, kid_x1000, phv, phv_per_layer
from .image import css, psnr, ssim

__all__ = [
    "css",
    "frechet_distance",
    "kernel_inception_distance",
    "kid_x1000",
    "phv",
    "phv_per_layer",
    "psnr",
    "ssim",
]
