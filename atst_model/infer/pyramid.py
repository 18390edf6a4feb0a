"""Streaming writer of tiled pyramidal BigTIFFs that OpenSlide, tiffslide, QuPath and tifffile open whole.

Layout: the Aperio SVS arrangement (what OpenSlide's, tiffslide's and Bio-Formats' SVS readers expect),
in a BigTIFF: IFD 0 is level 0 in 256 x 256 tiles, IFD 1 a stripped thumbnail, IFDs 2.. the reduced
levels, tiled, each half the size of the one above (sides rounded up) until the long side is
<= ``max_side``. All RGB, JPEG quality 90 when ``imagecodecs`` has JPEG, else zlib. Level 0's
ImageDescription is an Aperio header naming the writer (``Aperio Image Library (compatible; ATST ...)``)
followed by ``|MPP = ...|AppMag = ...`` when the pixel size and objective power are known; every level
also carries its pixel size in the TIFF resolution tags (pixels per centimetre), which generic TIFF
readers use. Readers (tested): OpenSlide reports every level, ``openslide.mpp-x/y`` and
``openslide.objective-power``; tiffslide likewise; tifffile reads one series with levels.

The earlier layout (reduced levels as SubIFDs of level 0) hid the pyramid from OpenSlide, which saw one
level, and had no pixel size.

Memory
------
* Level 0 is handed over in row chunks (:meth:`PyramidWriter.put`) and written tile row by tile row as
  the rows arrive: one 256-row strip of the image (``256 x W x 3`` B) is buffered, plus what tifffile
  holds while encoding one tile row and at most ``depth`` queued chunks.
* Each reduced level (and the thumbnail, one halving below the smallest level) is made from the one
  above as rows stream through (:class:`_Halver`: 2 x 2 box means, so a chunk of rows can be reduced on
  its own) and stored in a ``numpy.memmap`` on an anonymous temporary file in the output's folder
  (``tempfile.TemporaryFile``: on POSIX it has no name, and the system removes it when it is closed or
  the process dies). Together the reduced levels take 1/3 of level 0's size in that file (~2 GB for a
  40k x 50k slide), paged by the system rather than held in process memory; they are written out tile
  row by tile row after level 0.

The file is written as ``<name>.partial`` and renamed to ``<name>`` only when complete; after an error
(or a KeyboardInterrupt) in the caller or in the writer thread the partial file is removed.

Downsampling: a pixel of level k+1 is ``(a + b + c + d + 2) >> 2`` of its 2 x 2 block in level k, the
last row / column repeated where a side is odd: what ``cv2.resize(..., INTER_AREA)`` gives on the level
padded to even sides.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .pipeline import Consumer
from .slide_io import SlideMeta

TIFF_TILE = 256
JPEG_QUALITY = 90
WRITER = "ATST virtual stain"


def pyramid_sizes(h: int, w: int, max_side: int = 1024) -> list[tuple[int, int]]:
    """Level sizes: ``(h, w)``, then halvings (rounded up) until the long side is <= ``max_side``."""
    sizes = [(h, w)]
    while max(sizes[-1]) > max_side:
        ph, pw = sizes[-1]
        sizes.append(((ph + 1) // 2, (pw + 1) // 2))
    return sizes


def default_compression() -> str:
    """``"jpeg"`` when imagecodecs can encode JPEG, else ``"zlib"``."""
    try:
        import imagecodecs

        return "jpeg" if imagecodecs.JPEG8.available or imagecodecs.JPEG.available else "zlib"
    except Exception:
        return "zlib"


def aperio_description(width: int, height: int, meta: SlideMeta | None, *, compression: str,
                       level: tuple[int, int] | None = None, title: str | None = None) -> str:
    """The ImageDescription of an Aperio-style page: header line, then ``|key = value`` pairs.

    ``level`` is ``(w, h)`` of a reduced level (header ``W x H -> w x h``, as Aperio writes it). Keys:
    ``AppMag`` and ``MPP`` when known (what readers turn into objective power and pixel size), ``Title``.
    """
    from atst_prep import __version__

    kind = f"JPEG/RGB Q={JPEG_QUALITY}" if compression == "jpeg" else f"{compression}/RGB"
    size = f"{width}x{height}" + (f" -> {level[0]}x{level[1]}" if level else "")
    parts = [f"Aperio Image Library (compatible; {WRITER} {__version__})\r\n{size} ({TIFF_TILE}x{TIFF_TILE}) {kind}"]
    if meta is not None and meta.objective_power:
        parts.append(f"AppMag = {meta.objective_power:g}")
    if meta is not None and meta.mpp:
        parts.append(f"MPP = {meta.mpp[0]:.6g}")
    if title:
        parts.append("Title = " + title.replace("|", "/").replace("\r", " ").replace("\n", " "))
    return "|".join(parts)


def halve(rows: np.ndarray) -> np.ndarray:
    """2 x 2 box means ``(a + b + c + d + 2) >> 2`` of ``rows (2m, w, 3)`` uint8; an odd last column is repeated."""
    if rows.shape[0] % 2:
        raise ValueError("halve needs an even number of rows")
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, rows[:, -1:]], axis=1)
    m, w2 = rows.shape[0] // 2, rows.shape[1] // 2
    s = rows.reshape(m, 2, w2, 2, rows.shape[2]).sum(axis=(1, 3), dtype=np.uint16)
    return ((s + 2) >> 2).astype(np.uint8)


class _Halver:
    """Reduce a level, arriving as row chunks, into ``out`` (the next level); pass the result on to ``below``."""

    def __init__(self, out: np.ndarray, src_height: int, below: "_Halver | None") -> None:
        self.out, self.src_height, self.below = out, src_height, below
        self._seen = self._written = 0
        self._carry: np.ndarray | None = None  # an odd row waiting for its partner

    def push(self, rows: np.ndarray) -> None:
        self._seen += len(rows)
        if self._carry is not None:
            rows = np.concatenate([self._carry, rows])
            self._carry = None
        if len(rows) % 2:
            if self._seen == self.src_height:  # last row of an odd height: repeated
                rows = np.concatenate([rows, rows[-1:]])
            else:
                self._carry, rows = rows[-1:].copy(), rows[:-1]
        if len(rows) == 0:
            return
        half = halve(rows)
        self.out[self._written:self._written + len(half)] = half
        self._written += len(half)
        if self.below is not None:
            self.below.push(half)


class PyramidWriter:
    """Write level 0 of an ``height`` x ``width`` RGB image, given as row chunks, into a pyramidal BigTIFF.

    A context manager; the writing runs in a background thread::

        with PyramidWriter(path, h, w) as writer:
            for chunk in chunks:          # (n, w, 3) uint8, top to bottom, h rows in all
                writer.put(chunk)
        # here the file is complete at ``path``; after an exception nothing is left

    Parameters
    ----------
    path : the BigTIFF to write. height, width : level 0 in px.
    compression : TIFF compression name; default :func:`default_compression`.
    max_side : the smallest level's long side is at most this.
    depth : row chunks queued for the writer thread before :meth:`put` waits.
    meta : pixel size and objective power written into the file (see the module docstring).
    title : a short note stored in the description (e.g. what the image is).
    """

    def __init__(self, path: Path | str, height: int, width: int, *, compression: str | None = None,
                 max_side: int = 1024, depth: int = 2, meta: SlideMeta | None = None,
                 title: str | None = None) -> None:
        self.path = Path(path)
        self.height, self.width = height, width
        self.sizes = pyramid_sizes(height, width, max_side)
        self.thumbnail_size = ((self.sizes[-1][0] + 1) // 2, (self.sizes[-1][1] + 1) // 2)
        self.meta, self.title = meta, title
        self.compression = compression or default_compression()
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._depth = depth
        self._rows = 0
        self._levels_file = None
        self._consumer: Consumer | None = None

    # --- caller side -------------------------------------------------------------------------------
    def __enter__(self) -> "PyramidWriter":
        try:
            self._levels, self._halver = self._reduced_levels()
            self._consumer = Consumer(self._write, self._depth, name="pyramid-writer")
        except BaseException:
            self._cleanup()
            raise
        return self

    def put(self, rows: np.ndarray) -> None:
        """Queue the next ``(n, width, 3)`` uint8 rows of level 0; re-raises the writer thread's exception."""
        if rows.ndim != 3 or rows.shape[1:] != (self.width, 3) or rows.dtype != np.uint8:
            raise ValueError(f"expected ({self.width}, 3) uint8 rows, got {rows.shape[1:]} {rows.dtype}")
        if self._rows + len(rows) > self.height:
            raise ValueError(f"more than the image's {self.height} rows")
        self._rows += len(rows)
        self._consumer.put(rows)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self._consumer.abort()
                return
            if self._rows != self.height:
                self._consumer.abort()
                raise ValueError(f"{self.path.name}: got {self._rows} of {self.height} rows")
            self._consumer.finish()
            os.replace(self._tmp, self.path)
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        self._levels = self._halver = None
        if self._levels_file is not None:
            self._levels_file.close()
            self._levels_file = None
        self._tmp.unlink(missing_ok=True)

    # --- writer thread -----------------------------------------------------------------------------
    def _reduced_levels(self) -> tuple[list[np.ndarray], _Halver]:
        """Arrays of levels 1.. and the thumbnail (views of one memmap on an anonymous temporary file) and
        the halver chain that fills them."""
        every = self.sizes + [self.thumbnail_size]
        sizes = every[1:]
        total = sum(h * w * 3 for h, w in sizes)
        self._levels_file = tempfile.TemporaryFile(dir=self.path.parent, prefix=f".{self.path.name}.",
                                                   suffix=".levels")
        store = np.memmap(self._levels_file, dtype=np.uint8, mode="w+", shape=(total,))
        levels, offset = [], 0
        for h, w in sizes:
            levels.append(store[offset:offset + h * w * 3].reshape(h, w, 3))
            offset += h * w * 3
        halver = None
        for k in range(len(levels) - 1, -1, -1):  # build bottom-up: each one feeds the next smaller
            halver = _Halver(levels[k], every[k][0], halver)
        return levels, halver

    def _options(self, size: tuple[int, int], *, tiled: bool = True) -> dict:
        """tifffile options of a page of ``size = (h, w)``: tiling, compression, description, resolution."""
        opts = dict(photometric="rgb", compression=self.compression, metadata=None, dtype=np.uint8)
        if tiled:
            opts.update(tile=(TIFF_TILE, TIFF_TILE), buffersize=TIFF_TILE * self.width * 3)  # one tile row at a time
        if self.compression == "jpeg":
            opts["compressionargs"] = {"level": JPEG_QUALITY}
        level = None if size == (self.height, self.width) else (size[1], size[0])
        if tiled:
            opts["description"] = aperio_description(self.width, self.height, self.meta, compression=self.compression,
                                                     level=level, title=self.title)
        if self.meta is not None and self.meta.mpp:  # pixels per centimetre at this level
            fx, fy = self.width / size[1], self.height / size[0]
            opts.update(resolution=(1e4 / (self.meta.mpp[0] * fx), 1e4 / (self.meta.mpp[1] * fy)),
                        resolutionunit="CENTIMETER")
        return opts

    def _write(self, chunks: Iterator[np.ndarray]) -> None:
        import tifffile

        with tifffile.TiffWriter(self._tmp, bigtiff=True) as tw:
            tw.write(self._level0_tiles(chunks), shape=(self.height, self.width, 3),
                     **self._options((self.height, self.width)))
            thumbnail = np.array(self._levels[-1])  # complete once level 0 is: all levels are filled as rows pass
            tw.write(thumbnail, **self._options(thumbnail.shape[:2], tiled=False))
            for level in self._levels[:-1]:
                tw.write(self._tiles(level), shape=level.shape, **self._options(level.shape[:2]))

    def _level0_tiles(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Tiles of level 0 in row-major order, each tile row yielded as soon as its rows have arrived."""
        strip, filled, done = np.empty((TIFF_TILE, self.width, 3), np.uint8), 0, 0
        for rows in chunks:
            self._halver.push(rows)
            i = 0
            while i < len(rows):
                n = min(TIFF_TILE - filled, len(rows) - i)
                strip[filled:filled + n] = rows[i:i + n]
                filled, done, i = filled + n, done + n, i + n
                if filled == TIFF_TILE or done == self.height:
                    yield from self._strip_tiles(strip[:filled])
                    # tifffile may still hold views of the yielded tiles: the next strip gets new memory
                    strip, filled = np.empty((TIFF_TILE, self.width, 3), np.uint8), 0

    def _tiles(self, level: np.ndarray) -> Iterator[np.ndarray]:
        """Tiles of a reduced level in row-major order, read one tile row at a time."""
        for y in range(0, level.shape[0], TIFF_TILE):
            self._consumer.check()
            yield from self._strip_tiles(np.array(level[y:y + TIFF_TILE]))

    @staticmethod
    def _strip_tiles(strip: np.ndarray) -> Iterator[np.ndarray]:
        for x in range(0, strip.shape[1], TIFF_TILE):
            yield strip[:, x:x + TIFF_TILE]  # edge tiles are zero-padded by tifffile


def write_pyramid(path: Path | str, level0: np.ndarray, max_side: int = 1024, compression: str | None = None,
                  meta: SlideMeta | None = None) -> list[tuple[int, int]]:
    """Write an in-memory ``(H, W, 3)`` uint8 image with :class:`PyramidWriter`; returns the level sizes."""
    h, w = level0.shape[:2]
    with PyramidWriter(path, h, w, compression=compression, max_side=max_side, meta=meta) as writer:
        for y in range(0, h, TIFF_TILE):
            writer.put(level0[y:y + TIFF_TILE])
    return writer.sizes


__all__ = ["PyramidWriter", "aperio_description", "default_compression", "halve", "pyramid_sizes", "write_pyramid", "TIFF_TILE"]
