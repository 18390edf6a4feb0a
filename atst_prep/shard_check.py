"""Validation of a shard against the schema of :mod:`atst_prep.shards` (``atst prep verify`` uses it)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .shards import (
    ALIGNMENT_ATTRS,
    ALIGNMENT_STATUSES,
    FILE_KEYS,
    IMAGE_KEYS,
    LAYOUTS,
    NUCLEI_STATUSES,
    READABLE_VERSIONS,
    REGISTERED_KEYS,
    SAMPLE_ATTRS,
    ShardError,
    _plain,
    read_header,
)

__all__ = ["validate"]


def validate(path: Path) -> list[str]:
    """Check a shard against the schema; return a list of problems (empty if fine)."""
    problems: list[str] = []
    try:
        header = read_header(path)
    except ShardError as exc:
        return [str(exc)]
    if header.get("schema_version") not in READABLE_VERSIONS:
        problems.append(f"schema_version {header.get('schema_version')} (this package reads "
                        f"{', '.join(map(str, READABLE_VERSIONS))})")
    layout = header.get("layout")
    if layout not in LAYOUTS:
        problems.append(f"layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    for key in ("dataset_id", "split", "shard_index", "n_samples", "params", "package_version"):
        if key not in header:
            problems.append(f"missing root attribute {key!r}")
    with h5py.File(path, "r") as f:
        n = int(header.get("n_samples", -1))
        names = f["names"].asstr()[()] if "names" in f else []
        if len(names) != n:
            problems.append(f"{len(names)} names for n_samples = {n}")
        samples = f.get("samples", {})
        if len(samples) != n:
            problems.append(f"{len(samples)} samples for n_samples = {n}")
        images = bool(header.get("stores_images", True))
        for key in sorted(samples):
            problems.extend(f"sample {key}: {p}" for p in _validate_sample(samples[key], images, layout))
    return problems


def _validate_sample(g: h5py.Group, images: bool, layout: str) -> list[str]:
    problems = [f"missing attribute {a!r}" for a in SAMPLE_ATTRS if a not in g.attrs]
    if problems:
        return problems
    shape = (int(g.attrs["height"]), int(g.attrs["width"]))
    expected = {"mask": (shape, np.uint8)}
    channels = {"dab": (shape, np.uint16), "hema": (shape, np.uint16)}
    if layout == "compact" and images:  # file bytes; the densities are unmixed from the IHC
        for key in FILE_KEYS.values():
            if key not in g:
                problems.append(f"missing dataset {key!r}")
            elif g[key].ndim != 1 or g[key].dtype != np.uint8 or not len(g[key]):
                problems.append(f"{key} is {g[key].shape} {g[key].dtype}, expected the file's bytes, (B,) uint8")
    else:
        expected.update(channels)
        if images:
            expected.update({k: (shape + (3,), np.uint8) for k in IMAGE_KEYS})
    if any(k in g for k in REGISTERED_KEYS):  # registered by filter-misaligned: all of them, as the originals
        expected.update({k: {**channels, **expected}[src] for k, src in REGISTERED_KEYS.items()})
    for key, (want_shape, want_dtype) in expected.items():
        if key not in g:
            problems.append(f"missing dataset {key!r}")
        elif g[key].shape != want_shape or g[key].dtype != want_dtype:
            problems.append(f"{key} is {g[key].shape} {g[key].dtype}, expected {want_shape} {np.dtype(want_dtype)}")
    for key in ("nuclei", "alignment", "windows"):
        if key not in g:
            problems.append(f"missing group {key!r}")
    if "windows" in g:
        problems.extend(_validate_windows(g["windows"], shape))
    if "nuclei" in g:
        problems.extend(_validate_nuclei(g["nuclei"]))
    if "alignment" in g:
        problems.extend(_validate_alignment(g["alignment"]))
    return problems


def _validate_windows(g: h5py.Group, shape: tuple[int, int]) -> list[str]:
    from .mask import window_origins

    window, stride = int(g.attrs.get("window", 0)), int(g.attrs.get("stride", 0))
    if window < 1 or stride < 1:
        return [f"windows: window {window} / stride {stride} px (expected >= 1)"]
    want = window_origins(*shape, window, stride)
    if "origins" not in g or "mask" not in g:
        return ["windows: origins or mask missing"]
    problems = []
    if not np.array_equal(g["origins"][()], want):
        problems.append(f"windows/origins are not the {window} px grid every {stride} px of a {shape[0]}x{shape[1]} tile")
    if g["mask"].shape != (len(want), window, window) or g["mask"].dtype != np.uint8:
        problems.append(f"windows/mask is {g['mask'].shape} {g['mask'].dtype}, expected "
                        f"({len(want)}, {window}, {window}) uint8")
    return problems


def _validate_alignment(g: h5py.Group) -> list[str]:
    status = _plain(g.attrs.get("status"))
    if status not in ALIGNMENT_STATUSES:
        return [f"alignment status {status!r} (expected one of {', '.join(ALIGNMENT_STATUSES)})"]
    if status == "pending":
        return []
    return [f"alignment: missing attribute {a!r}" for a in ALIGNMENT_ATTRS if a not in g.attrs]


def _validate_nuclei(g: h5py.Group) -> list[str]:
    status = _plain(g.attrs.get("status"))
    if status not in NUCLEI_STATUSES:
        return [f"nuclei status {status!r} (expected one of {', '.join(NUCLEI_STATUSES)})"]
    if status == "pending":
        return []
    problems = [f"nuclei: missing attribute {a!r}" for a in ("counter", "counter_version", "counter_params", "count")
                if a not in g.attrs]
    if "centroids" not in g or "areas" not in g:
        return problems + ["nuclei: status done but centroids or areas missing"]
    centroids, areas = g["centroids"], g["areas"]
    n = len(areas)
    if centroids.shape != (n, 2) or centroids.dtype != np.float32:
        problems.append(f"nuclei/centroids is {centroids.shape} {centroids.dtype}, expected ({n}, 2) float32")
    if areas.ndim != 1 or areas.dtype != np.int32:
        problems.append(f"nuclei/areas is {areas.shape} {areas.dtype}, expected ({n},) int32")
    if "count" in g.attrs and int(g.attrs["count"]) != n:
        problems.append(f"nuclei count attribute {int(g.attrs['count'])} for {n} nuclei")
    if "centroids_registered" in g and (g["centroids_registered"].shape != (n, 2)
                                        or g["centroids_registered"].dtype != np.float32):
        problems.append(f"nuclei/centroids_registered is {g['centroids_registered'].shape} "
                        f"{g['centroids_registered'].dtype}, expected ({n}, 2) float32")
    return problems
