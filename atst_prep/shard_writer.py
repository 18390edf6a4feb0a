"""Writing shards (the layout is in :mod:`atst_prep.shards`): whole, under a temporary name, renamed
when complete; and the helpers passes use to add data to a shard they rewrite."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import cv2
import h5py
import numpy as np

from . import __version__
from .shards import (
    CHANNEL_SCALE,
    CHUNK,
    FILE_KEYS,
    IMAGE_COMPRESSIONS,
    LAYOUTS,
    SCHEMA,
    SCHEMA_VERSION,
    PreparedPair,
    encode_density,
)


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


def write_channel(group: h5py.Group, key: str, stored: np.ndarray) -> h5py.Dataset:
    """Write a density in the stored fixed point (:func:`~atst_prep.shards.encode_density`) as ``group[key]``."""
    if key in group:
        del group[key]
    d = _dataset(group, key, stored, shuffle=True)
    d.attrs["units"] = "rgb2hed optical density"
    d.attrs["scale"] = CHANNEL_SCALE
    return d


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
                 image_compression: str = "none", counter: Mapping | None = None, layout: str = "compact") -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.layout = layout
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
        if self.layout == "compact":
            if self.store_images:  # the files as they are; the densities are unmixed from the IHC on reading
                for key, data in ((FILE_KEYS["he"], pair.he_file), (FILE_KEYS["ihc"], pair.ihc_file)):
                    if not data:
                        raise ValueError(f"{pair.name}: the compact layout needs the source files' bytes")
                    g.create_dataset(key, data=np.frombuffer(data, np.uint8), track_times=False)
            else:  # nothing to unmix from: keep the densities
                self._channels(g, pair)
        else:
            if self.store_images:
                _dataset(g, "he", pair.he, compression=self.image_compression)
                _dataset(g, "ihc", pair.ihc, compression=self.image_compression)
            self._channels(g, pair)
        _dataset(g, "mask", mask)
        _write_windows(g, pair)
        if nuclei is None:
            g.create_group("nuclei").attrs["status"] = "pending"
        else:
            write_nuclei(g, nuclei, self.counter)
        g.create_group("alignment").attrs["status"] = "pending"
        self._names.append(pair.name)

    @staticmethod
    def _channels(g: h5py.Group, pair: PreparedPair) -> None:
        for key, density in (("dab", pair.dab), ("hema", pair.hema)):
            write_channel(g, key, encode_density(density))

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
            "layout": self.layout,
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



__all__ = ["ShardWriter", "create_like", "fsync_dir", "write_channel", "write_nuclei"]
