"""CPP-Net's training loss (without the shape-aware perceptual term) plus the density term."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import CppNet, CppNetOutput


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms; distances are in px, so their L1 is scaled down."""

    prob: float = 1.0
    dist: float = 0.2
    dist_refined: float = 0.2
    density: float = 1.0


def sample_object_pixels(prob: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, n) flat indices of pixels drawn with probability proportional to ``prob`` (B, 1, H, W).

    Images without any object pixel draw uniformly (their loss weight is 0).
    """
    weights = prob.flatten(1) + 1e-12
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def cppnet_loss(model: CppNet, out: CppNetOutput, prob: torch.Tensor, dist: torch.Tensor, density: torch.Tensor,
                weights: LossWeights = LossWeights(), n_refine: int = 256) -> dict[str, torch.Tensor]:
    """Loss terms and their weighted ``total``.

    ``prob`` (B, 1, H, W) in [0, 1] (normalised distance to the background),
    ``dist`` (B, R, H, W) px, ``density`` (B, 1, H, W) nuclei per px. Ray
    distances are penalised where the pixel is inside a nucleus, weighted by
    ``prob`` (centres count most, as in StarDist). The refined distances are
    penalised at ``n_refine`` pixels per image drawn with probability ``prob``,
    which is the same weighting in expectation.
    """
    w = prob
    norm = w.sum().clamp_min(1.0) * dist.shape[1]
    index = sample_object_pixels(prob, n_refine)
    refined = model.refine_at(out.dist, out.weight_logits, index)
    b, r = dist.shape[:2]
    target = torch.gather(dist.flatten(2), 2, index.unsqueeze(1).expand(b, r, index.shape[1]))
    has_object = (prob.flatten(1).amax(dim=1) > 0).to(dist.dtype).view(b, 1, 1)
    terms = {
        "prob": F.binary_cross_entropy_with_logits(out.prob_logit, prob),
        "dist": (w * (out.dist - dist).abs()).sum() / norm,
        "dist_refined": ((refined - target).abs() * has_object).sum() / (has_object.sum() * r * index.shape[1]).clamp_min(1.0),
        # scaled so a nucleus's peak (~0.04 / px) gives O(1) errors
        "density": F.mse_loss(out.density * 100.0, density * 100.0),
    }
    terms["total"] = sum(getattr(weights, k) * v for k, v in terms.items())
    return terms
