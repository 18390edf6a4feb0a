"""Shard masks and nuclei as GeoJSON that QuPath imports (``atst prep export-annotations``).

Coordinates are in QuPath's pixel-corner frame of one tile: pixel (x, y)
covers [x, x+1) x [y, y+1), x = column, y = row, so its centre is (x + 0.5, y + 0.5).

The mask's outline is marching squares at level 0.5 on the mask padded with
one zero pixel (:func:`skimage.measure.find_contours`, every contour closed):
each vertex sits at the middle of a pixel edge, positive pixels are
8-connected (as OpenCV's connected components) and holes 4-connected, and the
unsimplified outline rasterised by the pixel-centre rule (:func:`rasterize`)
gives back the mask exactly. A mask becomes one annotation (one object in
QuPath, with its total area); each nucleus one detection.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import shapely
from shapely.affinity import affine_transform
from shapely.geometry import MultiPolygon, mapping
from skimage.measure import find_contours

from . import __version__
from .errors import UserError
from .manifest import find_manifests, read_manifest, write_if_changed
from .shards import ShardError, _plain, check_readable, iter_samples, read_header

__all__ = ["ExportError", "ExportSummary", "annotation_features", "export_annotations", "mask_polygons",
           "nucleus_features", "rasterize", "write_geojson"]

REGION_CLASS = "DAB-positive"
REGION_COLOR = (255, 200, 0)
INSIDE_SUFFIX = " (DAB-positive region)"
NUCLEUS_COLORS = {1: (220, 50, 50), 0: (40, 120, 220)}  # inside the mask, outside
_SIDES = 16  # vertices of a nucleus polygon
_DECIMALS = 3


class ExportError(UserError):
    """Nothing to export, or an option out of range; one line."""


def mask_polygons(mask: np.ndarray, *, simplify: float = 0.5) -> MultiPolygon:
    """The positive region of ``mask`` (H, W) (nonzero = positive) as polygons with holes, corner frame.

    Parameters
    ----------
    mask : (H, W) array
    simplify : float
        Tolerance in px of Douglas-Peucker, topology-preserving ring by ring (rings
        that then cross, rare below 1 px, are repaired by :func:`shapely.make_valid`);
        0 keeps every marching-squares vertex (the outline rasterises back to ``mask``).

    Returns
    -------
    shapely.MultiPolygon
        Valid; one part per 8-connected component of positive pixels, each with
        one hole per 4-connected component of negative pixels it encloses; empty
        for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not simplify >= 0:
        raise ValueError(f"need a 2-D mask and simplify >= 0 px, got shape {mask.shape} and {simplify}")
    contours = find_contours(np.pad(mask != 0, 1).astype(np.float64), 0.5, fully_connected="high",
                             positive_orientation="high")
    if not contours:
        return MultiPolygon()
    lengths = np.array([len(c) for c in contours])
    xy = np.concatenate(contours)[:, ::-1] - 0.5  # (row, col) of the padded mask -> (x, y), centres at +0.5
    rings = shapely.linearrings(xy, indices=np.repeat(np.arange(len(contours)), lengths))
    # positive pixels lie left of the path in (row, col): outer rings are clockwise in (x, y), holes not
    outer = ~shapely.is_ccw(rings)
    shells = shapely.polygons(rings[outer])
    owner = np.arange(len(shells))
    if not outer.all():  # prepared shells against the first vertex of each hole
        probes = shapely.points(xy[(np.cumsum(lengths) - lengths)[~outer]])
        shell, hole = shapely.STRtree(probes).query(shells, predicate="contains")
        # a hole's own shell is the smallest around it (any larger one also holds that shell)
        smallest = np.lexsort((shapely.area(shells)[shell], hole))
        owner = np.concatenate([owner, shell[smallest][np.unique(hole[smallest], return_index=True)[1]]])
    if simplify > 0:  # ring by ring: with 1000s of rings 5-10x faster than the whole geometry at once
        rings = shapely.simplify(rings, simplify, preserve_topology=True)
    order = np.argsort(owner, kind="stable")  # each polygon's shell first, then its holes
    parts = shapely.polygons(np.concatenate([rings[outer], rings[~outer]])[order], indices=owner[order])
    geometry = shapely.multipolygons(parts)
    if simplify > 0 and not shapely.is_valid(geometry):  # unsimplified rings never touch; simplified ones may
        parts = shapely.get_parts(shapely.get_parts(shapely.make_valid(geometry)))  # may hold lines: drop them
        geometry = shapely.multipolygons(parts[(shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)])
    return geometry


def rasterize(geometry, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8, 1 where a pixel's centre (c + 0.5, r + 0.5) lies inside ``geometry`` (corner frame).

    Even-odd scan conversion over all rings, which is the interior for valid
    (Multi)Polygons; a centre exactly on an edge goes to the polygon on its
    right (below, for a horizontal edge), so polygons sharing an edge never
    share a pixel. The inverse of :func:`mask_polygons` with ``simplify=0``.
    """
    height, width = shape
    coords, ring = shapely.get_coordinates(shapely.get_rings(shapely.get_parts(shapely.get_parts(geometry))),
                                           return_index=True)
    same = ring[1:] == ring[:-1]
    (x0, y0), (x1, y1) = coords[:-1][same].T, coords[1:][same].T
    # the row centres y = r + 0.5 an edge crosses: min(y0, y1) <= y < max(y0, y1)
    r0 = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
    n = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64) - r0
    edge = np.repeat(np.arange(len(n)), n)
    rows = r0[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(n) - n, n)
    x = x0[edge] + (rows + 0.5 - y0[edge]) / (y1[edge] - y0[edge]) * (x1[edge] - x0[edge])
    column = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)  # the first centre at or right of the crossing
    toggles = np.bincount(rows * (width + 1) + column, minlength=height * (width + 1))
    return (np.cumsum(toggles.reshape(height, width + 1)[:, :width], axis=1) & 1).astype(np.uint8)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def annotation_features(geometry, *, name: str, color: tuple[int, int, int], properties: dict | None = None,
                        affine: Sequence[float] | None = None) -> list[dict]:
    """``geometry`` as one QuPath annotation: a list of one GeoJSON Feature, or none for an empty geometry.

    Numbers in ``properties`` become QuPath measurements, next to ``area_px``
    (the area after ``affine``); other entries are copied into the feature's
    properties (QuPath shows ``"name"`` as the object's name). ``affine``:
    ``[a, b, d, e, xoff, yoff]`` as :func:`shapely.affinity.affine_transform`,
    to place a tile in another frame. Coordinates are rounded to 3 decimals.
    """
    if geometry.is_empty:
        return []
    if affine is not None:
        geometry = affine_transform(geometry, affine)
    geometry = shapely.transform(geometry, lambda c: np.round(c, _DECIMALS))
    extra = dict(properties or {})
    props = {"objectType": "annotation", **{k: v for k, v in extra.items() if not _number(v)},
             "classification": {"name": name, "color": [int(c) for c in color]}, "isLocked": False,
             "measurements": {"area_px": round(float(geometry.area), _DECIMALS),
                              **{k: float(v) for k, v in extra.items() if _number(v)}}}
    return [{"type": "Feature", "geometry": mapping(geometry), "properties": props}]


def nucleus_features(centroids: np.ndarray, areas: np.ndarray, mask: np.ndarray, *,
                     name: str = "Nucleus") -> list[dict]:
    """One QuPath detection per nucleus: a 16-gon of the nucleus' area centred on its centroid.

    ``centroids`` (N, 2) (x, y) px are as shards store them, the mean of the
    nucleus' pixel indices (a pixel's centre is integer there), so the polygon
    is centred at centroid + 0.5 in the corner frame. Measurements: ``area_px``
    and ``inside_mask`` (1 if ``mask`` is positive at the centroid's pixel,
    rounded as :func:`atst_prep.nuclei.count_in_mask` does; 0 off the tile);
    nuclei inside are classified ``"<name> (DAB-positive region)"``, the others ``name``.
    """
    centroids = np.asarray(centroids, np.float64).reshape(-1, 2)
    areas = np.asarray(areas, np.float64).reshape(-1)
    if len(areas) != len(centroids):
        raise ValueError(f"{len(centroids)} centroids but {len(areas)} areas")
    xy = np.rint(centroids).astype(np.int64)
    on = (xy >= 0).all(1) & (xy[:, 0] < mask.shape[1]) & (xy[:, 1] < mask.shape[0])
    inside = np.zeros(len(xy), int)
    inside[on] = mask[xy[on, 1], xy[on, 0]] != 0
    angle = np.arange(_SIDES + 1) % _SIDES * (2 * math.pi / _SIDES)
    radius = np.sqrt(areas / (_SIDES / 2 * math.sin(2 * math.pi / _SIDES)))  # the polygon's area is the area
    rings = (centroids[:, None, :] + 0.5 + radius[:, None, None] * np.stack([np.cos(angle), np.sin(angle)], 1))
    classes = {flag: {"name": name + INSIDE_SUFFIX * flag, "color": list(NUCLEUS_COLORS[flag])} for flag in (0, 1)}
    return [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
             "properties": {"objectType": "detection", "classification": classes[flag], "isLocked": False,
                            "measurements": {"area_px": area, "inside_mask": flag}}}
            for ring, area, flag in zip(rings.round(_DECIMALS).tolist(), areas.tolist(), inside.tolist())]


def write_geojson(path: Path, features: list[dict], properties: dict | None = None) -> Path:
    """Write a FeatureCollection as compact JSON, atomically and only if it changed (:func:`atst_prep.manifest.write_if_changed`).

    ``properties`` (about the whole file) is a foreign member of the collection, which QuPath ignores.
    """
    path = Path(path)
    collection = {"type": "FeatureCollection", **({"properties": properties} if properties else {}),
                  "features": features}
    text = json.dumps(collection, separators=(",", ":"), allow_nan=False)  # C encoder: json.dump() is ~5x slower
    write_if_changed(path, text.encode())
    return path


@dataclass
class ExportSummary:
    """What an export did: files written, one line per sample or shard skipped, samples without nuclei."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    nuclei_pending: list[str] = field(default_factory=list)
    nuclei: int = 0


def _plan(root: Path, summary: ExportSummary) -> tuple[list[tuple], set[str]]:
    """(dataset, split, path, n_samples, header) of each readable shard; the datasets with a name in two splits."""
    shards, split_of, repeated = [], {}, set()
    for manifest_path in find_manifests(root):
        manifest = read_manifest(manifest_path)
        dataset = manifest.get("dataset_id") or manifest_path.parent.name
        for split, entry in ((s, e) for s, info in manifest["splits"].items() for e in info.get("shards", [])
                             if e.get("n_samples")):
            path = manifest_path.parent / entry["file"]
            try:
                header = read_header(path)
                with h5py.File(path, "r") as f:
                    names = [_plain(g.attrs["name"]) for g in f["samples"].values()]
            except (ShardError, OSError, KeyError) as exc:
                summary.skipped.append(str(exc) if isinstance(exc, ShardError) else f"{path}: unreadable ({exc})")
                continue
            check_readable(path, header.get("schema_version"))
            shards.append((dataset, split, path, len(names), header))
            repeated.update(dataset for name in names if split_of.setdefault((dataset, name), split) != split)
    if not shards and not summary.skipped:
        raise ExportError(f"{root}: the manifests list no samples (run 'atst prep build-masks' first)")
    return shards, repeated


def export_annotations(shards: Path, out: Path, *, register: bool = False, simplify: float = 0.5,
                       on_start: Callable[[int], None] | None = None,
                       on_sample: Callable[[int], None] | None = None) -> ExportSummary:
    """Write ``<out>/<dataset>/<name>.geojson`` for every sample of every shard under ``shards``.

    A dataset with a name in several splits has all its files in
    ``<out>/<dataset>/<split>/``. Each file holds the mask as one annotation and
    the nuclei as detections in the IHC tile's frame or, with ``register``, the
    registered ones in the H&E tile's frame. Samples without registration data
    and unreadable shards are recorded in ``skipped``; samples whose nuclei are
    pending get the mask only; an old shard schema is an error (ShardError).
    ``on_start(total samples)``; ``on_sample(n)`` as n more samples are done or skipped.
    """
    if not simplify >= 0:
        raise ExportError(f"--simplify must be >= 0 px, got {simplify}")
    summary = ExportSummary()
    plan, repeated = _plan(Path(shards), summary)
    if on_start:
        on_start(sum(shard[3] for shard in plan))
    mask_key, xy_key = ("mask_registered", "centroids_registered") if register else ("mask", "centroids")
    for dataset, split, path, n_samples, header in plan:
        try:
            samples = list(iter_samples(path, arrays=(mask_key,)))
        except (OSError, KeyError) as exc:
            summary.skipped.append(f"{path}: unreadable ({exc})")
            samples = []
            if on_sample:
                on_sample(n_samples)
        folder = Path(out) / dataset / (split if dataset in repeated else "")
        for sample in samples:
            label = f"{dataset}/{split}/{sample['name']} ({path.name})"
            if register and mask_key not in sample:
                summary.skipped.append(f"{label}: not registered (run 'atst prep filter-misaligned --register' first)")
            elif register and "centroids" in sample and xy_key not in sample:
                summary.skipped.append(f"{label}: nuclei counted after registration (run 'atst prep "
                                       "filter-misaligned --register' again)")
            else:
                properties = {"atst_version": __version__, "dataset": dataset, "split": split, "shard": str(path),
                              "source_root": header.get("source_root"), "frame": "he" if register else "ihc",
                              "mask_params": header.get("params", {}).get("mask"), "simplify_px": simplify}
                features = _sample_features(sample, mask_key, xy_key, simplify, properties)
                folder.mkdir(parents=True, exist_ok=True)
                summary.written.append(write_geojson(folder / f"{sample['name']}.geojson", features, properties))
                summary.nuclei += properties["nuclei"] or 0
                if properties["nuclei"] is None:
                    summary.nuclei_pending.append(label)
            if on_sample:
                on_sample(1)
    return summary


def _sample_features(sample: dict, mask_key: str, xy_key: str, simplify: float, properties: dict) -> list[dict]:
    """The features of one sample; adds what the file's ``properties`` say about it."""
    mask = sample[mask_key]
    nuclei = nucleus_features(sample[xy_key], sample["areas"], mask) if xy_key in sample else []
    inside = sum(f["properties"]["measurements"]["inside_mask"] for f in nuclei)
    counts = {"nuclei": len(nuclei), "nuclei_inside": inside} if xy_key in sample else {}
    properties.update({k: sample[k] for k in ("name", "he_path", "ihc_path", "width", "height")},
                      mask_px=int(np.count_nonzero(mask)), **({"nuclei": None, "nuclei_inside": None} | counts))
    if properties["frame"] == "he":
        alignment = sample.get("alignment", {})
        properties["alignment"] = {k: alignment[k] if _number(alignment.get(k)) and math.isfinite(alignment[k])
                                   else None for k in ("shift_x", "shift_y", "rotation")}
    region = annotation_features(mask_polygons(mask, simplify=simplify), name=REGION_CLASS, color=REGION_COLOR,
                                 properties={"name": sample["name"], "mask_px": properties["mask_px"], **counts})
    return region + nuclei
