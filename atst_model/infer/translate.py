"""Virtual staining with a trained generator: load it from a trainer checkpoint, translate images and folders.

``he2ihc`` runs G1 (H&E -> IHC), ``ihc2he`` runs G2 (IHC -> H&E). Images of any
size are cut into blended windows (:mod:`.stitch`), run in batches (bf16
autocast on CUDA, float32 on CPU) and put back seamlessly. Networks take and
return ``(N, 3, T, T)`` in [-1, 1]; images are ``(H, W, 3)`` uint8 RGB in [0, 255].
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from atst_prep.errors import UserError

from .stitch import Canvas, blend_weights, read_window, tile_grid

DIRECTIONS = {"he2ihc": "g1", "ihc2he": "g2"}
FORMATS = ("png", "jpg")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def load_generator(checkpoint: Path | str, direction: str = "he2ihc", device: str | torch.device = "cpu") -> nn.Module:
    """The generator of ``direction`` built as the checkpoint's config names it, weights loaded, in eval mode.

    Raises
    ------
    FileNotFoundError
        No such file (one-line message).
    UserError
        Unknown direction, not a trainer checkpoint, or weights that do not fit the named network.
    """
    from ..networks import create_network
    from ..train.config import TrainerConfig
    from ..train.state import load

    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    payload = load(checkpoint)
    key = DIRECTIONS[direction]
    models, config = payload.get("models"), payload.get("config")
    if not isinstance(models, dict) or key not in models or not isinstance(config, dict):
        raise UserError(f"{checkpoint}: not a trainer checkpoint (no config or no {key} weights)")
    c = TrainerConfig.from_dict(config)
    with warnings.catch_warnings():  # "no encoder weights": we restore every weight just below
        warnings.simplefilter("ignore")
        net = create_network(c.g1, mode=c.g1_mode) if key == "g1" else create_network(c.g2)
    try:
        net.load_state_dict(models[key])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{checkpoint}: {key} weights do not fit {c.g1 if key == 'g1' else c.g2} ({first})") from None
    return net.to(device).eval()


class TileSizeError(UserError):
    """A ``--tile`` the network cannot take: the same for every input, so a run stops at once."""


def input_geometry(net: nn.Module) -> tuple[int, int]:
    """``(multiple, min_side)`` the network needs of its input sides."""
    config = getattr(net, "config", None)
    if config is not None and hasattr(config, "img_size") and hasattr(config, "mode"):  # G1
        return (16, 16) if config.mode == "native" else (1, config.img_size)
    if config is not None and hasattr(config, "n_down"):  # G2
        return config.multiple, config.multiple
    return getattr(net, "input_multiple", 1), getattr(net, "input_min_side", 1)


def effective_tile(h: int, w: int, tile: int, overlap: int, net: nn.Module) -> int:
    """The window side: ``tile``, or smaller for small images (one window then covers the image), never below the net's minimum."""
    multiple, min_side = input_geometry(net)
    if tile % multiple or tile < min_side:
        raise TileSizeError(f"--tile {tile} does not suit this network (needs a multiple of {multiple}, >= {min_side})")
    need = -(-(max(h, w) + 2 * overlap) // multiple) * multiple  # one window + reflected margins
    return max(min(tile, need), min_side, 2 * overlap)


def _autocast(device: torch.device, precision: str | None):
    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; valid: bf16, fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


@torch.inference_mode()
def translate_image(net: nn.Module, rgb: np.ndarray, tile: int = 512, overlap: int = 64, batch: int = 8,
                    device: str | torch.device | None = None, precision: str | None = None,
                    on_tiles: Callable[[int], None] | None = None) -> np.ndarray:
    """Translate one image with seamless blended tiling.

    Parameters
    ----------
    net : generator taking ``(N, 3, T, T)`` in [-1, 1] and returning the same shape and range.
    rgb : ``(H, W, 3)`` uint8 in [0, 255], any size >= 1 px.
    tile, overlap : window side and blend ramp in px (see :mod:`.stitch`); small images use one smaller window.
    batch : windows per forward pass.
    device : default: the network's device. precision : "bf16" (default on CUDA) or "fp32" (default on CPU).
    on_tiles : called with the number of windows after each batch (progress).

    Returns
    -------
    ``(H, W, 3)`` uint8 RGB in [0, 255].
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    device = torch.device(device) if device is not None else next(net.parameters(), torch.empty(0)).device
    h, w = rgb.shape[:2]
    t = effective_tile(h, w, tile, overlap, net)
    canvas = Canvas(h, w, 3, blend_weights(t, overlap))
    corners = tile_grid(h, w, t, overlap)
    for i in range(0, len(corners), batch):
        chunk = corners[i:i + batch]
        x = torch.from_numpy(np.stack([read_window(rgb, y0, x0, t) for y0, x0 in chunk]))
        x = x.to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # uint8 [0,255] -> [-1,1]
        with _autocast(device, precision):
            y = net(x)
        y = ((y.float() + 1.0) * 127.5).clamp_(0, 255).permute(0, 2, 3, 1).cpu().numpy()
        for out, (y0, x0) in zip(y, chunk):
            canvas.add(out, y0, x0)
        if on_tiles:
            on_tiles(len(chunk))
    return canvas.result()


def count_tiles(h: int, w: int, tile: int, overlap: int, net: nn.Module) -> int:
    """Number of windows :func:`translate_image` runs on an ``h`` x ``w`` image."""
    return len(tile_grid(h, w, effective_tile(h, w, tile, overlap, net), overlap))


@dataclass
class FolderResult:
    """Outputs written and inputs rejected (one ``"<path>: <reason>"`` line each)."""

    written: list[Path] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


class NameClaims:
    """Output file names taken so far in one run: a second input that would write the same file is refused."""

    def __init__(self) -> None:
        self._first: dict[str, Path] = {}

    def claim(self, path: Path, suffix: str) -> str | None:
        """None if ``<stem>.<suffix>`` is free (now taken by ``path``), else the rejection line."""
        name = f"{path.stem}.{suffix}"
        first = self._first.setdefault(name, path)
        return None if first == path else f"{path}: same name as {first} (both would write {name}); rename one"


def expand_inputs(inputs: Iterable[Path | str]) -> tuple[list[Path], list[str]]:
    """Image files named directly or found in named folders (sorted, not recursive); missing paths rejected."""
    files, rejected = [], []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            rejected.append(f"{p}: no such file or folder")
    return files, rejected


def translate_folder(net: nn.Module, inputs: Iterable[Path | str], out_dir: Path | str, fmt: str = "png", *,
                     tile: int = 512, overlap: int = 64, batch: int = 8, device=None, precision: str | None = None,
                     on_image: Callable[[int], None] | None = None,
                     on_tiles: Callable[[int], None] | None = None,
                     claims: NameClaims | None = None) -> FolderResult:
    """Translate image files and folders of images into ``out_dir/<stem>.<fmt>``.

    Files that cannot be read as 8-bit RGB, and files whose name another input
    already uses (their outputs would collide), are rejected with one line
    each and skipped. ``on_image`` gets each image's window count before it runs.
    """
    from atst_prep.images import InputError, read_rgb, write_rgb

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, rejected = expand_inputs(inputs)
    result = FolderResult(rejected=rejected)
    claims = claims if claims is not None else NameClaims()
    for path in files:
        clash = claims.claim(path, fmt)  # same output name: never overwrite a result
        if clash:
            result.rejected.append(clash)
            continue
        try:
            rgb = read_rgb(path)
        except InputError as exc:
            result.rejected.append(str(exc))
            continue
        if on_image:
            on_image(count_tiles(rgb.shape[0], rgb.shape[1], tile, overlap, net))
        out = translate_image(net, rgb, tile, overlap, batch, device, precision, on_tiles)
        target = out_dir / f"{path.stem}.{fmt}"
        write_rgb(target, out)
        result.written.append(target)
    return result
