"""The shard format: one HDF5 file holding many prepared pairs of one split.

Layout (schema version 2; version 1 had no ``windows/``)::

    /                       attrs: schema, schema_version, package_version,
                                   dataset_id, split, shard_index, n_samples,
                                   source_root, params (JSON), stores_images;
                                   nuclei_source_sha256 once count-nuclei has
                                   rewritten it (the checksum of the shard before);
                                   alignment (JSON) and alignment_source_sha256 likewise
                                   once filter-misaligned has
    /names                  (N,) str       pair names, in sample order
    /rejected               (R,) str       one JSON object per rejected input
    /samples/<i:05d>/       attrs: name, he_path, ihc_path (relative to
                                   source_root), meta (JSON), height, width,
                                   tissue_fraction_he, tissue_fraction_ihc,
                                   mask_fraction, dab_mean_in_mask
        he, ihc             (H, W, 3) uint8 RGB         (unless opted out)
        dab, hema           (H, W) uint16   IHC optical density in rgb2hed units
                                            times 10^4 (attrs scale = 1e-4)
        mask                (H, W) uint8    1 = DAB-positive (Eq. 1 on the whole tile)
        windows/            attrs: window (side, px), stride (px)
            origins         (K, 2) int32    (y, x) of each fixed training window
            mask            (K, w, w) uint8 Eq. 1 of each window on its own: the
                                            auxiliary losses' targets (see
                                            atst_prep.mask.window_masks)
        nuclei/             attrs: status = "pending" until a counter fills it, then
                                   status = "done", counter (name), counter_version,
                                   counter_params (JSON), count (N) and, for counters
                                   with a weights file, weights_sha256
            centroids       (N, 2) float32  (x, y) px of each nucleus in the tile
            areas           (N,) int32      px
        alignment/          attrs: status = "pending" until filter-misaligned fills it, then
                                   "done" (or "unscorable"), shift_x, shift_y (px: where
                                   the IHC content sits relative to the H&E), rotation
                                   (deg), similarity, overlap, score, kept, rule, reason,
                                   method, version, params (JSON); see atst_prep.align
        mask_registered     (H, W) uint8    after filter-misaligned --register: mask and
        dab_registered      (H, W) uint16   DAB moved by -shift into the H&E frame (attrs
                                            shift); nuclei/centroids_registered (N, 2)
                                            float32 likewise, once nuclei are counted

Storage choices (measured, see README): every array is chunked 256x256, so
a 512x512 crop touches at most 9 chunks. Images are stored uncompressed by
default: LZF saves only ~10 % on tissue pixels and costs ~40 ms per image to
write and ~6x the read time ("lzf" and "gzip" are options). Stain densities
are fixed-point uint16 (1e-4 steps, finer than one byte step of the input at
any intensity; range 0-6.5) with byte shuffle and LZF: ~0.9 MB per channel.
The mask is uint8 with LZF (~0.1 MB). A 1024x1024 pair costs ~8 MB, or ~2 MB
without images.

Nuclei are detected on the stored (fixed-point) densities, whether at build
time (``build-masks --counter``) or later (``count-nuclei``), so both give the
same nuclei; the counter's identity is also in the root ``params`` (key
``nuclei``), which is what resuming compares.

Validation against this layout: :mod:`atst_prep.shard_check`.

Files are written under a temporary name and renamed when complete, so a
shard that exists is whole. Times are not tracked, so the same inputs and
parameters give the same contents (:func:`atst_prep.verify.content_digest`), and in practice
byte-identical files (always in-process and with joblib workers in our tests;
inside Dask workers HDF5 occasionally lays the same contents out differently).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import cv2
import h5py
import numpy as np

from . import __version__
from .errors import UserError

SCHEMA = "atst-shard"
SCHEMA_VERSION = 2
CHUNK = 256
IMAGE_KEYS = ("he", "ihc")
CHANNEL_KEYS = ("dab", "hema")
#: Stain densities are stored as round(density / CHANNEL_SCALE) in uint16.
CHANNEL_SCALE = 1e-4
IMAGE_COMPRESSIONS = ("none", "lzf", "gzip")
SAMPLE_ATTRS = ("name", "he_path", "ihc_path", "meta", "height", "width")
NUCLEI_STATUSES = ("pending", "done")
ALIGNMENT_STATUSES = ("pending", "done", "unscorable")
ALIGNMENT_ATTRS = ("shift_x", "shift_y", "rotation", "similarity", "overlap", "score", "kept", "rule", "reason",
                   "method", "version", "params")
#: Datasets filter-misaligned --register adds to a sample, registered from these.
REGISTERED_KEYS = {"mask_registered": "mask", "dab_registered": "dab"}


class ShardError(UserError):
    """A shard that does not follow the schema; ``str()`` names the file."""


@dataclass(frozen=True)
class PreparedPair:
    """Everything prep computes for one pair, ready to be written.

    Arrays are (H, W, 3) uint8 for images, (H, W) float32 for the IHC DAB and
    hematoxylin densities, (H, W) bool for the mask; (K, 2) int32 window
    origins and (K, w, w) bool window masks (Eq. 1 per training window).
    """

    name: str
    he_path: str
    ihc_path: str
    meta: Mapping[str, str]
    he: np.ndarray
    ihc: np.ndarray
    dab: np.ndarray
    hema: np.ndarray
    mask: np.ndarray
    tissue_fraction_he: float
    tissue_fraction_ihc: float
    window: int = 0
    window_stride: int = 0
    window_origins: np.ndarray = None
    window_masks: np.ndarray = None


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (min(CHUNK, shape[0]), min(CHUNK, shape[1])) + tuple(shape[2:])


def _dataset(group: h5py.Group, key: str, data: np.ndarray, *, compression: str | None = "lzf",
             shuffle: bool = False) -> h5py.Dataset:
    opts = 1 if compression == "gzip" else None
    return group.create_dataset(key, data=data, chunks=_chunks(data.shape), compression=compression,
                                compression_opts=opts, shuffle=shuffle, track_times=False)


def _write_windows(g: h5py.Group, pair: PreparedPair) -> None:
    w = g.create_group("windows", track_order=False)
    w.attrs["window"], w.attrs["stride"] = int(pair.window), int(pair.window_stride)
    origins = np.zeros((0, 2), np.int32) if pair.window_origins is None else np.asarray(pair.window_origins, np.int32)
    w.create_dataset("origins", data=origins, track_times=False)
    masks = (np.zeros((0, pair.window, pair.window), bool) if pair.window_masks is None else pair.window_masks)
    masks = np.ascontiguousarray(masks).view(np.uint8)
    w.create_dataset("mask", data=masks, chunks=(1,) + masks.shape[1:] if len(masks) else None,
                     compression="lzf" if len(masks) else None, track_times=False)


def encode_density(density: np.ndarray) -> np.ndarray:
    """Optical density (float, >= 0) -> the stored uint16 fixed point."""
    scaled = np.asarray(density, np.float32) * np.float32(1 / CHANNEL_SCALE) + np.float32(0.5)
    return np.clip(scaled, 0, 65535).astype(np.uint16)


def decode_density(stored: np.ndarray) -> np.ndarray:
    """The stored uint16 fixed point -> optical density, float32."""
    return np.asarray(stored, np.float32) * np.float32(CHANNEL_SCALE)


def as_stored(density: np.ndarray) -> np.ndarray:
    """``density`` as a reader of the shard will get it back (rounded to the fixed point)."""
    return decode_density(encode_density(density))


def write_nuclei(group: h5py.Group, nuclei, counter: Mapping) -> None:
    """Store ``nuclei`` in sample ``group``'s ``nuclei/``, replacing whatever was there.

    ``nuclei`` has ``centroids`` (N, 2) (x, y) px and ``areas`` (N,) px (an
    :class:`atst_prep.nuclei.Nuclei`); ``counter`` is the counter's identity
    as in the root ``params["nuclei"]``: ``{"counter", "version", "params"}``
    and, for a weights file, ``"weights_sha256"``.
    """
    centroids = np.asarray(nuclei.centroids, np.float32).reshape(-1, 2)
    areas = np.asarray(nuclei.areas).astype(np.int32).reshape(-1)
    if len(areas) != len(centroids):
        raise ValueError(f"{len(centroids)} centroids but {len(areas)} areas")
    g = group.require_group("nuclei")
    for key in ("centroids", "areas", "centroids_registered"):  # registered centroids belong to the old nuclei
        if key in g:
            del g[key]
    for key in list(g.attrs):
        del g.attrs[key]
    g.create_dataset("centroids", data=centroids, track_times=False)
    g.create_dataset("areas", data=areas, track_times=False)
    attrs = {"status": "done", "counter": counter["counter"], "counter_version": str(counter["version"]),
             "counter_params": json.dumps(counter.get("params", {}), sort_keys=True), "count": len(areas)}
    if counter.get("weights_sha256"):
        attrs["weights_sha256"] = counter["weights_sha256"]
    for key, value in attrs.items():
        g.attrs[key] = value


def create_like(group: h5py.Group, key: str, data: np.ndarray, template: h5py.Dataset) -> h5py.Dataset:
    """Write ``data`` as ``group[key]`` (replacing it) stored as ``template`` is: chunks, filter, shuffle."""
    if key in group:
        del group[key]
    return group.create_dataset(key, data=data, chunks=template.chunks, compression=template.compression,
                                compression_opts=template.compression_opts, shuffle=template.shuffle,
                                track_times=False)


_STR = h5py.string_dtype("utf-8")


class ShardWriter:
    """Write one shard to ``tmp_path``; :meth:`commit` renames it to ``final_path``.

    Use as a context manager: leaving the block without :meth:`commit` (an
    exception, Ctrl-C) removes the temporary file, and a hard kill leaves only
    a ``*.partial`` file that the next build deletes.
    """

    def __init__(self, final_path: Path, header: Mapping[str, object], *, store_images: bool = True,
                 image_compression: str = "none", counter: Mapping | None = None) -> None:
        if image_compression not in IMAGE_COMPRESSIONS:
            raise ValueError(f"image_compression must be one of {IMAGE_COMPRESSIONS}, got {image_compression!r}")
        self.image_compression = None if image_compression == "none" else image_compression
        self.final_path = Path(final_path)
        self.tmp_path = self.final_path.with_name(f".{self.final_path.name}.{os.getpid()}.partial")
        self.store_images = store_images
        self.counter = counter
        self._header = dict(header)
        self._names: list[str] = []
        self._rejected: list[str] = []
        self._file = h5py.File(self.tmp_path, "w", libver=("v110", "v110"), track_order=False)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.tmp_path.unlink(missing_ok=True)

    def add(self, pair: PreparedPair, nuclei=None) -> None:
        """Write one pair; ``nuclei`` (detected on :func:`as_stored` densities) needs the writer's ``counter``."""
        if nuclei is not None and self.counter is None:
            raise ValueError("nuclei given to a ShardWriter made without a counter identity")
        index = len(self._names)
        g = self._file.create_group(f"samples/{index:05d}", track_order=False)
        height, width = pair.mask.shape
        mask = np.ascontiguousarray(pair.mask).view(np.uint8)
        positive = cv2.countNonZero(mask)
        attrs = {
            "name": pair.name,
            "he_path": pair.he_path,
            "ihc_path": pair.ihc_path,
            "meta": json.dumps(dict(pair.meta), sort_keys=True),
            "height": height,
            "width": width,
            "tissue_fraction_he": pair.tissue_fraction_he,
            "tissue_fraction_ihc": pair.tissue_fraction_ihc,
            "mask_fraction": positive / mask.size,
            "dab_mean_in_mask": cv2.mean(pair.dab, mask=mask)[0] if positive else 0.0,
        }
        for key, value in attrs.items():
            g.attrs[key] = value
        if self.store_images:
            _dataset(g, "he", pair.he, compression=self.image_compression)
            _dataset(g, "ihc", pair.ihc, compression=self.image_compression)
        for key, density in (("dab", pair.dab), ("hema", pair.hema)):
            d = _dataset(g, key, encode_density(density), shuffle=True)
            d.attrs["units"] = "rgb2hed optical density"
            d.attrs["scale"] = CHANNEL_SCALE
        _dataset(g, "mask", mask)
        _write_windows(g, pair)
        if nuclei is None:
            g.create_group("nuclei").attrs["status"] = "pending"
        else:
            write_nuclei(g, nuclei, self.counter)
        g.create_group("alignment").attrs["status"] = "pending"
        self._names.append(pair.name)

    @property
    def n_samples(self) -> int:
        return len(self._names)

    def reject(self, record: Mapping[str, str]) -> None:
        """Record one rejected input (``{"name", "file", "reason", ...}``)."""
        self._rejected.append(json.dumps(dict(record), sort_keys=True))

    def commit(self) -> Path:
        f = self._file
        f.create_dataset("names", data=np.array(self._names, dtype=object), dtype=_STR, track_times=False)
        f.create_dataset("rejected", data=np.array(self._rejected, dtype=object), dtype=_STR, track_times=False)
        if "samples" not in f:
            f.create_group("samples")
        header = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "package_version": __version__,
            **self._header,
            "n_samples": len(self._names),
            "stores_images": self.store_images,
        }
        for key, value in header.items():
            f.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        f.flush()
        os.fsync(f.id.get_vfd_handle())
        f.close()
        self._file = None
        os.replace(self.tmp_path, self.final_path)
        fsync_dir(self.final_path.parent)
        return self.final_path


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_of(path: Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def read_header(path: Path) -> dict:
    """The root attributes of a shard, with ``params`` decoded; raises ShardError."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            rejected = [json.loads(r) for r in f["rejected"].asstr()[()]] if "rejected" in f else []
    except (OSError, KeyError) as exc:
        raise ShardError(f"{path}: not a readable shard ({exc})") from None
    if attrs.get("schema") != SCHEMA:
        raise ShardError(f"{path}: not an ATST shard (schema attribute {attrs.get('schema')!r})")
    if "params" in attrs:
        attrs["params"] = json.loads(attrs["params"])
    attrs["rejected"] = rejected
    return attrs


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def iter_samples(path: Path, *, arrays: tuple[str, ...] = ("he", "ihc", "dab", "mask")) -> Iterator[dict]:
    """Yield each sample of a shard as a dict of its attributes and the named arrays.

    Once nuclei are counted, ``centroids`` (N, 2) float32 (x, y) px and
    ``areas`` (N,) int32 are included whatever ``arrays`` says, and so is
    ``centroids_registered`` once registered. ``alignment`` is the dict of the
    sample's alignment attributes. ``arrays`` may name ``mask_registered`` and
    ``dab_registered`` (decoded like ``dab``).
    """
    with h5py.File(path, "r") as f:
        for key in sorted(f["samples"]):
            g = f["samples"][key]
            sample = {k: _plain(v) for k, v in g.attrs.items()}
            sample["meta"] = json.loads(sample.get("meta", "{}"))
            for a in arrays:
                if a in g:
                    sample[a] = decode_density(g[a][()]) if a in CHANNEL_KEYS + ("dab_registered",) else g[a][()]
            if "nuclei" in g and "centroids" in g["nuclei"]:
                sample["centroids"] = g["nuclei/centroids"][()]
                sample["areas"] = g["nuclei/areas"][()]
                if "centroids_registered" in g["nuclei"]:
                    sample["centroids_registered"] = g["nuclei/centroids_registered"][()]
            if "alignment" in g:
                sample["alignment"] = {k: _plain(v) for k, v in g["alignment"].attrs.items()}
            yield sample

