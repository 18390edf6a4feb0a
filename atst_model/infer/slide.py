"""Virtual staining of whole slides (SVS / pyramidal TIFF) into a tiled pyramidal BigTIFF.

Memory approach
---------------
* Input: level 0 is read in horizontal bands of tiles (:class:`SlideReader`): only the TIFF tiles that a
  band of windows touches are decoded (``tifffile`` page ``decode``; the ``zarr`` package is not needed).
  Untiled (stripped) level-0 pages fall back to ``tifffile.imread`` of the whole level, which must fit in memory.
* Windows are processed one horizontal row at a time. The float32 blend canvas holds one row of windows
  (``tile`` x width x 3 x 4 B plus its weight sum); the ``overlap`` rows its ramp shares with the next row are
  carried over, finished rows are written into the output.
* Output: level 0 is assembled as a uint8 ``(H, W, 3)`` array (3 B/px: ~6 GB for a 40k x 50k slide) and the
  pyramid is made from it; this, not the canvas, is the memory limit. Streaming level 0 to the writer as tiles
  is left for later.

Background windows (tissue fraction below ``tissue_threshold``, measured on every 8th pixel of the window,
the :func:`atst_prep.images.tissue_fraction` optical-density test) are not run through the network: their
output is white (255) and they are blended like any other window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .stitch import axis_starts, blend_weights, reflect_index
from .translate import _autocast, effective_tile

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi"}
SLIDE_MIN_SIDE = 4096


@dataclass
class SlideResult:
    """What :func:`translate_slide` wrote: the file, level-0 size, pyramid sizes and window counts."""

    path: Path
    height: int
    width: int
    levels: list[tuple[int, int]]
    windows: int
    skipped: int


class SlideReader:
    """Rows of level 0 of a slide, decoding only the tiles they touch."""

    def __init__(self, path: Path | str) -> None:
        import tifffile

        self._tf = tifffile.TiffFile(path)
        page = self._tf.series[0].levels[0].pages[0]
        self.page = page
        self.height, self.width = int(page.imagelength), int(page.imagewidth)
        self._full = None
        shape = page.shape
        if not (page.is_tiled and page.planarconfig == 1 and page.imagedepth == 1 and len(shape) == 3
                and shape[2] in (3, 4) and page.dtype == np.uint8):
            full = self._tf.series[0].levels[0].asarray()  # whole level in memory
            self._full = self._to_rgb(full)

    @staticmethod
    def _to_rgb(a: np.ndarray) -> np.ndarray:
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.dtype != np.uint8:
            raise ValueError(f"expected an 8-bit slide, got {a.dtype}")
        return np.ascontiguousarray(a[..., :3])

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` (inside the image) of level 0, ``(y1 - y0, W, 3)`` uint8."""
        if self._full is not None:
            return self._full[y0:y1]
        p = self.page
        th, tw = p.tilelength, p.tilewidth
        across = -(-self.width // tw)
        out = np.empty((y1 - y0, self.width, 3), np.uint8)
        fh = self._tf.filehandle
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(across):
                index = ty * across + tx
                offset, count = p.dataoffsets[index], p.databytecounts[index]
                if count == 0:
                    tile = np.zeros((th, tw, 3), np.uint8)
                else:
                    fh.seek(offset)
                    data = fh.read(count)  # before touching p.decode: its first use may move the file position
                    seg, _, _ = p.decode(data, index, jpegtables=p.jpegtables)
                    tile = seg.reshape(th, tw, -1)[..., :3]
                ta, tb = max(y0, ty * th), min(y1, (ty + 1) * th)
                xa, xb = tx * tw, min(self.width, (tx + 1) * tw)
                out[ta - y0:tb - y0, xa:xb] = tile[ta - ty * th:tb - ty * th, :xb - xa]
        return out

    def close(self) -> None:
        self._tf.close()


def is_slide(path: Path | str) -> bool:
    """A slide: any readable .svs/.ndpi file (scanner formats), or a .tif/.tiff with more than
    :data:`SLIDE_MIN_SIDE` px on a side or more than one level."""
    path = Path(path)
    if path.suffix.lower() not in SLIDE_SUFFIXES or not path.is_file():
        return False
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            s = tf.series[0]
            return len(s.levels) > 1 or max(s.levels[0].shape[:2]) > SLIDE_MIN_SIDE or path.suffix.lower() in (".svs", ".ndpi")
    except Exception:  # not a TIFF: an ordinary image reader will reject it
        return False


def pyramid_sizes(h: int, w: int, max_side: int = 1024) -> list[tuple[int, int]]:
    """Level sizes: ``(h, w)``, then halvings (rounded up) until the long side is <= ``max_side``."""
    sizes = [(h, w)]
    while max(sizes[-1]) > max_side:
        ph, pw = sizes[-1]
        sizes.append(((ph + 1) // 2, (pw + 1) // 2))
    return sizes


def _compression() -> str:
    try:
        import imagecodecs

        return "jpeg" if imagecodecs.JPEG8.available or imagecodecs.JPEG.available else "zlib"
    except Exception:
        return "zlib"


def write_pyramid(path: Path | str, level0: np.ndarray, max_side: int = 1024) -> list[tuple[int, int]]:
    """Write ``level0`` (H, W, 3) uint8 as a tiled BigTIFF with 2x INTER_AREA downsamples as SubIFDs.

    Written to ``<path>.partial`` first and renamed when complete. Returns the level sizes.
    """
    import cv2
    import tifffile

    path = Path(path)
    sizes = pyramid_sizes(*level0.shape[:2], max_side)
    comp = _compression()
    opts = dict(tile=(256, 256), photometric="rgb", compression=comp)
    if comp == "jpeg":
        opts["compressionargs"] = {"level": 90}
    tmp = path.with_name(path.name + ".partial")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            tw.write(level0, subifds=len(sizes) - 1, metadata=None, **opts)
            level = level0
            for h, w in sizes[1:]:
                level = cv2.resize(level, (w, h), interpolation=cv2.INTER_AREA)
                tw.write(level, subfiletype=1, metadata=None, **opts)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return sizes


@torch.inference_mode()
def translate_slide(net: nn.Module, slide_path: Path | str, out_path: Path | str, *, tile: int = 512,
                    overlap: int = 64, batch: int = 8, device=None, precision: str | None = None,
                    tissue_threshold: float = 0.01,
                    on_tiles: Callable[[int], None] | None = None) -> SlideResult:
    """Translate level 0 of a slide with blended windows, skipping background, into a pyramidal BigTIFF.

    Parameters
    ----------
    net : generator taking and returning ``(N, 3, T, T)`` in [-1, 1].
    slide_path : SVS / TIFF (level 0 is used). out_path : the BigTIFF to write.
    tile, overlap, batch, device, precision : as :func:`.translate.translate_image`.
    tissue_threshold : windows with a smaller tissue fraction are not run (output white).
    on_tiles : called with the number of windows (run or skipped) after each row of windows.
    """
    from atst_prep.images import tissue_fraction

    device = torch.device(device) if device is not None else next(net.parameters(), torch.empty(0)).device
    reader = SlideReader(slide_path)
    try:
        H, W = reader.height, reader.width
        t = effective_tile(H, W, tile, overlap, net)
        weights = blend_weights(t, overlap)
        stride = t - overlap
        ys, xs = axis_starts(H, t, overlap), axis_starts(W, t, overlap)
        ix = reflect_index(np.arange(xs[0], xs[-1] + t), W)  # band columns, reflected at the sides
        out = np.empty((H, W, 3), np.uint8)
        acc = np.zeros((t, W, 3), np.float32)  # rows [y0, y0 + t) of the current window row
        wsum = np.zeros((t, W), np.float32)
        windows = skipped = 0
        for k, y0 in enumerate(ys):
            iy = reflect_index(np.arange(y0, y0 + t), H)
            lo, hi = int(iy.min()), int(iy.max()) + 1
            band = reader.rows(lo, hi)[(iy - lo)[:, None], ix[None, :]]  # (t, len(ix), 3)
            run, white = [], []
            for x0 in xs:
                win = band[:, x0 - xs[0]:x0 - xs[0] + t]
                (run if tissue_fraction(win, step=8) >= tissue_threshold else white).append((x0, win))
            outputs = [(x0, np.full((t, t, 3), 255, np.float32)) for x0, _ in white]
            for i in range(0, len(run), batch):
                chunk = run[i:i + batch]
                x = torch.from_numpy(np.stack([w for _, w in chunk])).to(device)
                x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
                with _autocast(device, precision):
                    y = net(x)
                y = ((y.float() + 1.0) * 127.5).clamp_(0, 255).permute(0, 2, 3, 1).cpu().numpy()
                outputs += [(x0, o) for (x0, _), o in zip(chunk, y)]
            for x0, o in outputs:
                xa, xb = max(x0, 0), min(x0 + t, W)
                if xa < xb:
                    wgt = weights[:, xa - x0:xb - x0]
                    acc[:, xa:xb] += o[:, xa - x0:xb - x0] * wgt[..., None]
                    wsum[:, xa:xb] += wgt
            windows += len(xs)
            skipped += len(white)
            last = k == len(ys) - 1
            done = t if last else stride  # rows [y0, y0 + done) receive no more windows
            ga, gb = max(y0, 0), min(y0 + done, H)
            if ga < gb:
                a = acc[ga - y0:gb - y0] / wsum[ga - y0:gb - y0, :, None]
                out[ga:gb] = np.clip(np.rint(a), 0, 255).astype(np.uint8)
            # carry the overlap rows into the next window row's canvas
            acc[:overlap], wsum[:overlap] = acc[stride:].copy(), wsum[stride:].copy()
            acc[overlap:], wsum[overlap:] = 0, 0
            if on_tiles:
                on_tiles(len(xs))
    finally:
        reader.close()
    sizes = write_pyramid(out_path, out)
    return SlideResult(Path(out_path), H, W, sizes, windows, skipped)


def count_slide_windows(path: Path | str, tile: int, overlap: int, net: nn.Module) -> int:
    """Number of windows :func:`translate_slide` visits on a slide (run or skipped)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        h, w = tf.series[0].levels[0].shape[:2]
    t = effective_tile(h, w, tile, overlap, net)
    return len(axis_starts(h, t, overlap)) * len(axis_starts(w, t, overlap))


__all__ = ["SlideResult", "SlideReader", "translate_slide", "write_pyramid", "pyramid_sizes", "is_slide",
           "count_slide_windows", "SLIDE_SUFFIXES"]
