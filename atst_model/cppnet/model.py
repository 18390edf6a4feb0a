"""The CPP-Net network: U-Net backbone, probability / ray-distance / density heads, context enhancement.

Shapes: input ``(B, C, H, W)`` stain densities (rgb2hed units, multiplied by
``config.input_scale`` inside the model); ``H`` and ``W`` multiples of
``2**depth``. Outputs (:class:`CppNetOutput`): ``prob_logit`` (B, 1, H, W),
``dist`` (B, R, H, W) initial ray distances in px, ``weight_logits``
(B, R * (S + 1), H, W) confidences of the context enhancement, ``density``
(B, 1, H, W) nuclei per pixel. Ray ``k`` points along angle ``2 pi k / R``
measured as StarDist does (row += r sin, column += r cos).

The context enhancement (:meth:`CppNet.refine_at`) is evaluated only at the
pixels that need it: sampled nucleus pixels in training, candidate pixels
(probability above threshold) at inference. That is what the loss and the
polygon NMS read, and it is 10-50x cheaper than refining every pixel.

Reference: Chen, Zhang et al., "CPP-Net: Context-aware Polygon Proposal
Network for Nucleus Segmentation", IEEE TIP 32, 2023.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_FORMAT = "atst-cppnet"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class CppNetConfig:
    """Architecture of a CPP-Net.

    Attributes
    ----------
    in_channels : stain channels fed in (1: hematoxylin; 2: hematoxylin, DAB).
    n_rays : directions of the star-convex polygon.
    base_channels : feature channels at full resolution (doubling per level).
    depth : number of down-sampling steps of the U-Net.
    n_samples : points sampled along each ray by the context enhancement.
    input_scale : densities are multiplied by this (rgb2hed units are ~0-0.3).
    prob_thresh, nms_thresh : defaults for turning predictions into instances.
    """

    in_channels: int = 1
    n_rays: int = 32
    base_channels: int = 32
    depth: int = 3
    n_samples: int = 4
    input_scale: float = 10.0
    prob_thresh: float = 0.5
    nms_thresh: float = 0.4

    def __post_init__(self) -> None:
        checks = {
            "in_channels": 1 <= self.in_channels <= 3, "n_rays": 4 <= self.n_rays <= 128,
            "base_channels": 4 <= self.base_channels <= 256, "depth": 1 <= self.depth <= 6,
            "n_samples": 0 <= self.n_samples <= 16, "input_scale": self.input_scale > 0,
            "prob_thresh": 0 < self.prob_thresh < 1, "nms_thresh": 0 < self.nms_thresh < 1,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid CPP-Net config: {', '.join(bad)}")

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.depth


#: Named configurations: "tiny" for tests and CPU demos, "small" the default, "base" as in the paper's scale.
CONFIGS = {
    "tiny": CppNetConfig(base_channels=8, depth=2, n_samples=3),
    "small": CppNetConfig(base_channels=16, depth=3, n_samples=4),
    "base": CppNetConfig(base_channels=32, depth=4, n_samples=6),
}


class CppNetOutput(NamedTuple):
    prob_logit: torch.Tensor
    dist: torch.Tensor
    weight_logits: torch.Tensor
    density: torch.Tensor


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class CppNet(nn.Module):
    """CPP-Net with a density head; see the module docstring for shapes."""

    def __init__(self, config: CppNetConfig = CONFIGS["small"]) -> None:
        super().__init__()
        self.config = config
        c = [config.base_channels * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList([_block(config.in_channels, c[0])] +
                                  [_block(c[i], c[i + 1]) for i in range(config.depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2) for i in range(config.depth)])
        self.merge = nn.ModuleList([_block(2 * c[i], c[i]) for i in range(config.depth)])
        f = c[0]
        self.features = nn.Sequential(nn.Conv2d(f, 2 * f, 3, padding=1), nn.ReLU(inplace=True))
        self.prob_head = nn.Conv2d(2 * f, 1, 1)
        self.dist_head = nn.Conv2d(2 * f, config.n_rays, 1)
        self.density_head = nn.Conv2d(2 * f, 1, 1)
        # confidence of the ray's own estimate and of each sampled point's estimate
        self.weight_head = nn.Conv2d(2 * f, config.n_rays * (config.n_samples + 1), 1)
        angles = torch.arange(config.n_rays, dtype=torch.float32) * (2 * math.pi / config.n_rays)
        self.register_buffer("ray_dx", torch.cos(angles).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("ray_dy", torch.sin(angles).view(1, -1, 1, 1), persistent=False)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(self.config.depth)):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.features(x)

    def forward(self, x: torch.Tensor) -> CppNetOutput:
        h, w = x.shape[-2:]
        m = self.config.multiple
        if h % m or w % m:
            raise ValueError(f"CPP-Net input sides must be multiples of {m}, got {h}x{w}")
        feats = self.backbone(x * self.config.input_scale)
        dist = F.softplus(self.dist_head(feats))
        density = F.softplus(self.density_head(feats)) * 0.01  # nuclei per px are small numbers
        return CppNetOutput(self.prob_head(feats), dist, self.weight_head(feats), density)

    def refine_at(self, dist: torch.Tensor, weight_logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """CPP-Net's context enhancement at chosen pixels: refined ray lengths (B, R, P).

        ``index`` (B, P) holds flat pixel indices ``row * W + col``. A point at
        fraction ``i / S`` of ray ``k`` lies ``(i / S) d_k`` from the pixel; its
        own distance along the same direction plus that offset is another
        estimate of the pixel's boundary distance. The result is the
        confidence-weighted mean of the ``S + 1`` estimates.
        """
        b, r, h, w = dist.shape
        n = self.config.n_samples
        p = index.shape[1]
        own = torch.gather(dist.flatten(2), 2, index.unsqueeze(1).expand(b, r, p))  # (B, R, P)
        if n == 0:
            return own
        rows = (index // w).to(dist.dtype).view(b, 1, p, 1)
        cols = (index % w).to(dist.dtype).view(b, 1, p, 1)
        frac = torch.arange(1, n + 1, device=dist.device, dtype=dist.dtype).view(1, 1, 1, n) / n
        step = own.unsqueeze(-1) * frac                                   # (B, R, P, S)
        px = cols + step * self.ray_dx.view(1, r, 1, 1)
        py = rows + step * self.ray_dy.view(1, r, 1, 1)
        # grid_sample wants (x, y) in [-1, 1]; channel k is sampled at its own ray's points
        grid = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], dim=-1)
        sampled = F.grid_sample(dist.reshape(b * r, 1, h, w), grid.reshape(b * r, p, n, 2),
                                mode="bilinear", padding_mode="border", align_corners=True).view(b, r, p, n)
        estimates = torch.cat([own.unsqueeze(-1), sampled + step], dim=-1)  # (B, R, P, S+1)
        logits = torch.gather(weight_logits.flatten(2), 2,
                              index.unsqueeze(1).expand(b, r * (n + 1), p)).view(b, r, n + 1, p)
        weights = torch.softmax(logits, dim=2).permute(0, 1, 3, 2)
        return (estimates * weights).sum(dim=-1)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Only the density map, (B, 1, H, W): what the differentiable count needs."""
        feats = self.backbone(x * self.config.input_scale)
        return F.softplus(self.density_head(feats)) * 0.01


def save_checkpoint(model: CppNet, path: Path, **extra) -> None:
    """Write weights and config; ``extra`` (JSON-like: numbers, strings, lists, dicts) is kept as metadata."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": asdict(model.config),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": extra}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[CppNet, dict]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no pickled code runs).

    Raises
    ------
    FileNotFoundError
        No file at ``path`` (the message says how to make one).
    ValueError
        The file is not an ATST CPP-Net checkpoint, or does not fit its config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no nucleus-model weights file here; train one with "
                                f"'atst prep train-nuclei --out {path}' or use --counter classical")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # corrupt zip, a pickle with code, a random file: all the same to the user
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an ATST CPP-Net checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')}, this package reads {CHECKPOINT_VERSION}")
    try:
        model = CppNet(CppNetConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"], strict=True)
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: weights do not fit the stored config ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), payload.get("meta", {})
