"""Virtual staining of whole slides (SVS / pyramidal TIFF) into a tiled pyramidal BigTIFF, streamed.

Pipeline: three threads joined by bounded queues (:mod:`.pipeline`).

1. A reader thread (:mod:`.slide_io`: OpenSlide for every format it reads, else tifffile decoding only
   the TIFF tiles a band touches) reads level 0 in horizontal bands, one per row of windows, reflects
   the band at the slide's sides and runs the tissue test on each window. It works up to two bands
   ahead of the network.
2. The calling thread moves each band to the compute device, runs the windows that hold tissue in
   batches, and blends all outputs into a one-row canvas on the device (:class:`_RowCanvas`). The
   ``overlap`` rows a window row shares with the next are carried over; the rows that receive no more
   windows are normalised to uint8 and handed to the writer.
3. A writer thread (:class:`.pyramid.PyramidWriter`) encodes level 0 tile row by tile row as rows
   arrive, and builds the reduced levels on the fly into a memory-mapped anonymous temporary file.
   The output appears under its name only when complete. It is laid out as an Aperio SVS with the
   source's pixel size and objective power, so OpenSlide, tiffslide and QuPath see every level.

Memory bound (level 0 is never held whole): with ``t`` the window side and ``W`` the slide width,
the host holds bands of ``3 t (W + t)`` B at most (2 queued, 1 being read plus its unreflected copy, 1
in use), chunks of finished rows of ``3 t W`` B at most (2 queued, 1 being put, 1 being written), and
two 256-row strips of level 0 (``768 W`` B each) with their encoded tiles: under
``32 t (W + t) + 2048 W`` B in all, about 0.9 GB for t = 512 and W = 50,000 px, against 7.5 GB for
level 0 of a 50k x 50k slide. The device holds the canvas (``16 t W`` B), the band and one batch.
The reduced levels (1/3 of level 0's size) live in a memory-mapped anonymous temporary file, paged by
the system. Untiled (stripped) level-0 pages read by tifffile are the exception: the whole level is
then read, and must fit in memory.

Background windows (tissue fraction below ``tissue_threshold``, measured on every 8th pixel of the window,
the :func:`atst_prep.images.tissue_fraction` optical-density test) are not run through the network: their
output is white (255) and they are blended like any other window.

Results are bit for bit those of :func:`.translate.translate_image` on the whole level (when no window
is skipped and the network's output for a window does not depend on the rest of its batch): the
canvas applies the same float32 operations in the same order.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from .annotate import PositiveRegion, RegionSummary
from .pipeline import Consumer, Prefetch
from .pyramid import PyramidWriter, pyramid_sizes, write_pyramid
from .slide_io import SLIDE_SUFFIXES, SlideMeta, SlideReader, is_slide, open_slide, slide_size
from .stitch import axis_starts, blend_weights, reflect_index
from .translate import _autocast, effective_tile


@dataclass
class SlideResult:
    """What :func:`translate_slide` wrote: the file, level-0 size, pyramid sizes, window counts, pixel size."""

    path: Path
    height: int
    width: int
    levels: list[tuple[int, int]]
    windows: int
    skipped: int
    meta: SlideMeta = SlideMeta()
    reader: str = "?"
    region: "RegionSummary | None" = None  # areas of the annotation, when one was written


def _bands(reader: SlideReader, t: int, overlap: int, tissue_threshold: float) -> Iterator[tuple]:
    """For each row of windows: ``(y0, band, tissue)``.

    ``band`` is ``(t, W + 2 * margin, 3)`` uint8, the window row's rows and columns reflected at the
    slide's sides; ``tissue[j]`` says whether window ``j`` of the row has tissue enough to be run.
    """
    from atst_prep.images import tissue_fraction

    H, W = reader.height, reader.width
    ys, xs = axis_starts(H, t, overlap), axis_starts(W, t, overlap)
    ix = reflect_index(np.arange(xs[0], xs[-1] + t), W)  # band columns, reflected at the sides
    for y0 in ys:
        iy = reflect_index(np.arange(y0, y0 + t), H)
        lo, hi = int(iy.min()), int(iy.max()) + 1
        band = reader.rows(lo, hi)[(iy - lo)[:, None], ix[None, :]]
        tissue = [tissue_fraction(band[:, x0 - xs[0]:x0 - xs[0] + t], step=8) >= tissue_threshold for x0 in xs]
        yield y0, band, tissue


class _RowCanvas:
    """Float32 blend canvas of one row of windows on the compute device: ``(3, t, W)`` sums and ``(t, W)`` weights.

    Operations are those of :class:`.stitch.Canvas` (weight products added in the same order, then one
    division and round-half-even), so the result is the same bit for bit.
    """

    def __init__(self, width: int, t: int, overlap: int, device: torch.device) -> None:
        self.width, self.t, self.overlap = width, t, overlap
        self.weights = torch.from_numpy(blend_weights(t, overlap)).to(device)
        self.acc = torch.zeros(3, t, width, device=device)
        self.wsum = torch.zeros(t, width, device=device)

    def add(self, out: torch.Tensor, x0: int) -> None:
        """Add one window's output ``(3, t, t)`` float32 in [0, 255] whose left edge is at column ``x0``."""
        xa, xb = max(x0, 0), min(x0 + self.t, self.width)
        if xa < xb:
            wgt = self.weights[:, xa - x0:xb - x0]
            self.acc[:, :, xa:xb] += out[:, :, xa - x0:xb - x0] * wgt
            self.wsum[:, xa:xb] += wgt

    def take(self, a: int, b: int) -> np.ndarray:
        """Canvas rows ``[a, b)`` normalised: ``(b - a, W, 3)`` uint8 on the host."""
        mean = self.acc[:, a:b] / self.wsum[a:b]
        rows = mean.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
        return rows.cpu().numpy()

    def shift(self) -> None:
        """Move the ``overlap`` rows shared with the next window row to the top; clear the rest."""
        stride, o = self.t - self.overlap, self.overlap
        self.acc[:, :o] = self.acc[:, stride:].clone()
        self.wsum[:o] = self.wsum[stride:].clone()
        self.acc[:, o:] = 0
        self.wsum[o:] = 0


def _run_windows(net: nn.Module, band: torch.Tensor, starts: list[int], x_first: int, t: int,
                 device: torch.device, precision: str | None) -> torch.Tensor:
    """Network outputs ``(n, 3, t, t)`` float32 in [0, 255] for the windows of ``band (t, Wb, 3)`` at ``starts``."""
    x = torch.stack([band[:, x0 - x_first:x0 - x_first + t] for x0 in starts])
    x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # uint8 [0,255] -> [-1,1]
    with _autocast(device, precision):
        y = net(x)
    return ((y.float() + 1.0) * 127.5).clamp_(0, 255)


@torch.inference_mode()
def translate_slide(net: nn.Module, slide_path: Path | str, out_path: Path | str, *, tile: int = 512,
                    overlap: int = 64, batch: int = 8, device=None, precision: str | None = None,
                    tissue_threshold: float = 0.01, compression: str | None = None,
                    on_tiles: Callable[[int], None] | None = None, reader: str = "auto",
                    mpp: float | None = None, annotations: Path | str | None = None,
                    mask_config=None) -> SlideResult:
    """Translate level 0 of a slide with blended windows, skipping background, into a pyramidal BigTIFF.

    Reading (with the tissue test) runs in one background thread and writing in another, so both
    overlap with the network; see the module docstring for the memory used.

    Parameters
    ----------
    net : generator taking and returning ``(N, 3, T, T)`` in [-1, 1].
    slide_path : any slide OpenSlide reads, or a TIFF (level 0 is used). out_path : the BigTIFF to write,
        with the source's pixel size and objective power (nothing is left there if this raises or is
        interrupted).
    tile, overlap, batch, device, precision : as :func:`.translate.translate_image`.
    tissue_threshold : windows with a smaller tissue fraction are not run (output white); 0 runs all.
    compression : TIFF compression of the output; default JPEG (quality 90) when available, else zlib.
    on_tiles : called with a number of windows (run or skipped) as they are done; they add up to
        :func:`count_slide_windows`.
    reader : "auto" (OpenSlide when it recognises the file, else tifffile), "openslide" or "tifffile".
    mpp : level 0's pixel size in um, used where the slide states none (the slide's own value wins).
    annotations : also write the fake's DAB-positive region here as QuPath GeoJSON
        (:class:`.annotate.PositiveRegion`; Eq. 1 with ``mask_config`` on each ``tile`` window).
    """
    device = torch.device(device) if device is not None else next(net.parameters(), torch.empty(0)).device
    source = open_slide(slide_path, reader)
    try:
        H, W = source.height, source.width
        meta = source.meta
        if meta.mpp is None and mpp is not None:
            meta = SlideMeta((mpp, mpp), meta.objective_power, meta.vendor)
        t = effective_tile(H, W, tile, overlap, net)
        ys, xs = axis_starts(H, t, overlap), axis_starts(W, t, overlap)
        canvas = _RowCanvas(W, t, overlap, device)
        white_out = torch.full((3, t, t), 255.0, device=device)  # what a skipped window contributes
        windows = skipped = 0
        region = PositiveRegion(H, W, tile, mask_config, meta.mpp) if annotations is not None else None
        # Eq. 1 of the written rows runs in its own thread, beside the network rather than between its batches
        annotator = Consumer(region.consume, depth=2, name="slide-annotator") if region is not None else None
        with _aborting(annotator), Prefetch(_bands(source, t, overlap, tissue_threshold), depth=2, name="slide-reader") as bands, \
                PyramidWriter(out_path, H, W, compression=compression, meta=meta,
                              title=f"virtual IHC of {Path(slide_path).name}") as writer:
            for k, (y0, band, tissue) in enumerate(bands):
                white = [x0 for x0, keep in zip(xs, tissue) if not keep]
                run = [x0 for x0, keep in zip(xs, tissue) if keep]
                for x0 in white:
                    canvas.add(white_out, x0)
                if white and on_tiles:
                    on_tiles(len(white))
                band_t = torch.from_numpy(band).to(device)
                for i in range(0, len(run), batch):
                    chunk = run[i:i + batch]
                    for x0, out in zip(chunk, _run_windows(net, band_t, chunk, xs[0], t, device, precision)):
                        canvas.add(out, x0)
                    if on_tiles:
                        on_tiles(len(chunk))
                windows += len(xs)
                skipped += len(white)
                done = t if k == len(ys) - 1 else t - overlap  # rows [y0, y0 + done) receive no more windows
                ga, gb = max(y0, 0), min(y0 + done, H)
                if ga < gb:
                    rows = canvas.take(ga - y0, gb - y0)
                    writer.put(rows)
                    if annotator is not None:  # the H&E rows under them: band columns start at xs[0]
                        annotator.put((rows, band[ga - y0:gb - y0, -xs[0]:W - xs[0]]))
                canvas.shift()
            summary = None
            if annotator is not None:  # before the pyramid is renamed into place: no output without its annotation
                annotator.finish()
                summary = region.write(annotations, properties={"source": Path(slide_path).name, "frame": "level 0"})
    finally:
        source.close()
    return SlideResult(Path(out_path), H, W, writer.sizes, windows, skipped, meta, source.name, summary)


@contextmanager
def _aborting(consumer: Consumer | None) -> Iterator[None]:
    """Stop ``consumer``'s thread if the block raises (after :meth:`Consumer.finish` there is nothing to stop)."""
    try:
        yield
    except BaseException:
        if consumer is not None:
            consumer.abort()
        raise


def count_slide_windows(path: Path | str, tile: int, overlap: int, net: nn.Module, reader: str = "auto") -> int:
    """Number of windows :func:`translate_slide` visits on a slide (run or skipped)."""
    h, w = slide_size(path, reader)
    t = effective_tile(h, w, tile, overlap, net)
    return len(axis_starts(h, t, overlap)) * len(axis_starts(w, t, overlap))


__all__ = ["SlideResult", "SlideMeta", "SlideReader", "translate_slide", "write_pyramid", "pyramid_sizes",
           "is_slide", "count_slide_windows", "SLIDE_SUFFIXES"]
