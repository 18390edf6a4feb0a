"""G1's ViT encoder in PathoDuet's shape, and loading PathoDuet's ``checkpoint_HE.pth`` into it.

PathoDuet (Hua et al., Medical Image Analysis 97, 2024; weights CC-BY-NC 4.0,
https://github.com/openmedlab/PathoDuet) is a MoCo-v3 ViT-B/16 trained on H&E.
Its checkpoint is a flat state_dict in timm ViT key names plus
``pretext_token``: two prefix tokens, ordered ``[pretext, cls, patches]``,
and a fixed 2-D sin-cos position embedding of 196 + 2 rows (zeros for the
two prefix rows). Inputs were RGB in [0, 1], not normalised.

Our encoder is a timm ``VisionTransformer`` with ``class_token=True,
reg_tokens=1``: timm orders its prefix ``[cls, reg, patches]``. The blocks
are permutation-equivariant over tokens, so ``pretext_token`` becomes
``reg_token`` and the two prefix rows of ``pos_embed`` swap places; the
outputs are then identical to PathoDuet's (a test holds the two together).
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

log = logging.getLogger(__name__)

PATCH_SIZE = 16
NUM_PREFIX_TOKENS = 2
#: What PathoDuet's checkpoint_HE.pth holds: ViT-B/16 at 224 (a 14 x 14 grid).
PATHODUET_SHAPE = {"embed_dim": 768, "depth": 12, "num_heads": 12, "img_size": 224}
WEIGHTS_HELP = ("PathoDuet's checkpoint_HE.pth (CC-BY-NC 4.0, not shipped with this toolkit) comes from "
                "https://github.com/openmedlab/PathoDuet; download it yourself and pass --encoder-weights PATH")


class EncoderWeightsWarning(UserWarning):
    """G1's ViT encoder starts from random weights (no PathoDuet checkpoint was given)."""


def sincos_pos_embed(grid_h: int, grid_w: int, dim: int, num_prefix: int = NUM_PREFIX_TOKENS) -> torch.Tensor:
    """MoCo-v3 / PathoDuet fixed 2-D sin-cos position embedding ``(1, num_prefix + grid_h * grid_w, dim)``.

    Patch ``k = row * grid_w + col`` gets ``[sin(row w), cos(row w), sin(col w), cos(col w)]``
    with ``w = 10000 ** -(i / (dim / 4))``; the prefix rows are zero.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32),
                                torch.arange(grid_w, dtype=torch.float32), indexing="ij")
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_r, out_c = rows.flatten()[:, None] * omega, cols.flatten()[:, None] * omega
    emb = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    return torch.cat([torch.zeros(num_prefix, dim), emb])[None]


def create_encoder(embed_dim: int = 768, depth: int = 12, num_heads: int = 12, img_size: int = 224,
                   dynamic_img_size: bool = False, freeze_pos_embed: bool = True,
                   drop_path_rate: float = 0.0) -> nn.Module:
    """A timm ViT/16 with PathoDuet's token layout, random weights, no head.

    Two prefix tokens (``cls_token``, ``reg_token``), ``pos_embed`` of
    ``2 + (img_size / 16) ** 2`` rows set to the fixed sin-cos embedding and,
    as in PathoDuet, not trained unless ``freeze_pos_embed=False``. With
    ``dynamic_img_size`` the embedding is interpolated to any input grid.
    Never downloads anything (``pretrained=False``).
    """
    vit = timm.create_model(
        "vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="", class_token=True, reg_tokens=1,
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, img_size=img_size, patch_size=PATCH_SIZE,
        dynamic_img_size=dynamic_img_size, drop_path_rate=drop_path_rate,
    )
    grid = img_size // PATCH_SIZE
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_pos_embed(grid, grid, embed_dim))
    vit.pos_embed.requires_grad_(not freeze_pos_embed)
    return vit


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a PathoDuet state_dict onto ``model`` (a :func:`create_encoder` ViT); pure, the input is not changed.

    - ``head.*`` (the MoCo projection/classifier) is dropped; so is a leading ``module.``.
    - ``pretext_token`` -> ``reg_token``; ``fc_norm.*`` -> ``norm.*`` if the file has no ``norm.*``.
    - ``pos_embed``: prefix rows reordered ``[pretext, cls]`` -> ``[cls, reg]``, then the patch grid
      resampled (bicubic, timm's ``resample_abs_pos_embed``) if ``model``'s grid differs.
    """
    out: dict[str, torch.Tensor] = {}
    has_norm = any(k.removeprefix("module.").startswith("norm.") for k in state_dict)
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("head."):
            continue
        if key == "pretext_token":
            key = "reg_token"
        elif key.startswith("fc_norm.") and not has_norm:
            key = key.removeprefix("fc_")
        elif key == "pos_embed" and value.ndim == 3 and value.shape[1] > NUM_PREFIX_TOKENS:
            value = torch.cat([value[:, 1:2], value[:, 0:1], value[:, NUM_PREFIX_TOKENS:]], dim=1)
            old = round((value.shape[1] - NUM_PREFIX_TOKENS) ** 0.5)
            new = tuple(model.patch_embed.grid_size)
            if (old, old) != new and old * old == value.shape[1] - NUM_PREFIX_TOKENS:
                value = resample_abs_pos_embed(value, new_size=list(new), old_size=[old, old],
                                               num_prefix_tokens=NUM_PREFIX_TOKENS)
        out[key] = value
    return out


def load_pathoduet(encoder: nn.Module, path: str | Path) -> nn.Module:
    """Load PathoDuet's ``checkpoint_HE.pth`` into ``encoder`` (strict: every encoder tensor must come from it).

    Parameters
    ----------
    encoder : a ViT from :func:`create_encoder` with PathoDuet's shape (embed 768, depth 12, heads 12).
    path : the checkpoint file (``torch.load(..., weights_only=True)``: no pickled code runs).

    Returns
    -------
    The same ``encoder``, its weights replaced in place.

    Raises
    ------
    FileNotFoundError
        No file at ``path``; the message says where the weights come from.
    ValueError
        The file is not a readable state_dict, or its tensors do not fit the encoder (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no PathoDuet encoder weights here. {WEIGHTS_HELP}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickled code, a random file: the same to the user
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a flat state_dict of tensors (PathoDuet's checkpoint_HE.pth is one)")
    if not any(k.removeprefix("module.") == "patch_embed.proj.weight" for k in state):
        raise ValueError(f"{path}: no 'patch_embed.proj.weight': not a timm ViT state_dict like PathoDuet's")
    filtered = checkpoint_filter_fn(state, encoder)
    expected = encoder.state_dict()
    missing = sorted(expected.keys() - filtered.keys())
    unexpected = sorted(filtered.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{path}: keys do not fit the encoder (missing: {_few(missing)}; unexpected: {_few(unexpected)})")
    for key, tensor in expected.items():
        if filtered[key].shape != tensor.shape:
            raise ValueError(f"{path}: {key} is {tuple(filtered[key].shape)} in the file, {tuple(tensor.shape)} "
                             f"in the encoder (PathoDuet weights need the ViT-B/16 G1, e.g. g1-vitb)")
    encoder.load_state_dict(filtered, strict=True)
    log.info("loaded PathoDuet encoder weights from %s (%d tensors)", path, len(filtered))
    return encoder


def _few(keys: list[str], n: int = 3) -> str:
    return "none" if not keys else ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
