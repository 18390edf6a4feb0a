"""``atst prep export-annotations``: mask outlines and nuclei as QuPath GeoJSON.

The outline is checked against the pixels it came from (rasterised back: exact
without simplification, IoU >= 0.98 with it), against OpenCV's connected
components (parts 8-connected, holes 4-connected) and scikit-image's region
areas; the files end to end against the shards they came from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import shapely
from shapely.geometry import shape
from skimage.measure import find_contours, label, regionprops
from typer.testing import CliRunner

from atst_prep.annotations import (
    annotation_features,
    mask_polygons,
    nucleus_features,
    rasterize,
    write_geojson,
)
from atst_prep.build import BuildConfig, build
from atst_prep.mask import MaskConfig, dab_mask
from atst_prep.nuclei import count_in_mask
from atst_prep.shards import iter_samples
from atst_prep.sources import detect
from cli.main import app

runner = CliRunner()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    return np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1)


def _components(mask: np.ndarray) -> tuple[int, int]:
    """(8-connected positive components, enclosed 4-connected negative ones) by OpenCV."""
    parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
    background = np.pad(mask == 0, 1, constant_values=True).astype(np.uint8)  # the padding joins every background touching the border
    return parts, cv2.connectedComponents(background, connectivity=4)[0] - 2


def _holes(geometry) -> int:
    return sum(len(p.interiors) for p in geometry.geoms)


# --------------------------------------------------------------------------- outlines


def test_skimage_contours_wind_as_mask_polygons_assumes():
    square = np.zeros((6, 6))
    square[2:4, 2:4] = 1
    (contour,) = find_contours(np.pad(square, 1), 0.5, fully_connected="high", positive_orientation="high")
    assert not shapely.is_ccw(shapely.linearrings(contour[:, ::-1]))  # outer rings clockwise in (x, y)


@pytest.mark.parametrize("radius", [5, 30])
def test_real_mask_outline_rasterises_back_exactly_and_simplified_closely(real_ihc_1024, radius):
    mask = dab_mask(real_ihc_1024, MaskConfig(closing_radius=radius)).astype(np.uint8)
    exact = mask_polygons(mask, simplify=0)
    assert exact.is_valid and np.array_equal(rasterize(exact, mask.shape), mask)
    parts, holes = _components(mask)
    assert (len(exact.geoms), _holes(exact)) == (parts, holes)
    if radius == 5:
        assert holes > 10  # the test sees holes
    assert exact.area == pytest.approx(mask.sum(), rel=0.01)  # corners cut by half-pixel chamfers
    simple = mask_polygons(mask)
    assert simple.is_valid and _iou(rasterize(simple, mask.shape), mask) >= 0.98
    assert simple.area == pytest.approx(mask.sum(), rel=0.02)
    assert shapely.get_num_coordinates(simple) < shapely.get_num_coordinates(exact) / 3


def test_rasterize_is_the_pixel_centre_rule(real_ihc):
    mask = dab_mask(real_ihc, MaskConfig(closing_radius=5))
    geometry = mask_polygons(mask, simplify=1.0)
    y, x = np.mgrid[:mask.shape[0], :mask.shape[1]] + 0.5
    inside, touching = shapely.contains_xy(geometry, x, y), shapely.intersects_xy(geometry, x, y)
    ours = rasterize(geometry, mask.shape).astype(bool)
    assert np.array_equal(ours[inside == touching], inside[inside == touching])  # ties only on the boundary


def test_holes_belong_to_the_smallest_ring_around_them():
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 30.5, xx - 32)
    mask = ((r < 20) & (r >= 10) | (r < 4)).astype(np.uint8)  # a ring, and a blob in its hole
    geometry = mask_polygons(mask, simplify=0)
    assert sorted(len(p.interiors) for p in geometry.geoms) == [0, 1]
    ring = next(p for p in geometry.geoms if p.interiors)
    blob = next(p for p in geometry.geoms if not p.interiors)
    assert not ring.intersects(blob) and shapely.Polygon(ring.interiors[0]).contains(blob)
    areas = sorted(p.area for p in geometry.geoms)
    pixels = sorted(r.area for r in regionprops(label(mask, connectivity=2)))
    assert np.allclose(areas, pixels, rtol=0.03)
    assert np.array_equal(rasterize(geometry, mask.shape), mask)


def _mask(spec: str) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in spec.split()], np.uint8)


@pytest.mark.parametrize("mask, parts, area", [
    (np.zeros((5, 7), np.uint8), 0, 0.0),
    (np.ones((5, 7), np.uint8), 1, 35 - 0.5),                   # four corners cut by a 1/8 px triangle
    (_mask("#.. .#. ..#"), 1, 3 * 0.5 + 2 * 0.5),              # diagonal pixels: 8-connected, one part
    (_mask("##.. ##.. .... ...#"), 2, 4 - 0.5 + 0.5),           # touching the border
    (_mask("### #.# ###"), 1, 9 - 0.5 - 0.5),                   # a one-pixel hole, 4-connected
])
def test_small_masks(mask, parts, area):
    geometry = mask_polygons(mask, simplify=0)
    assert len(geometry.geoms) == parts and geometry.area == pytest.approx(area)
    assert np.array_equal(rasterize(geometry, mask.shape), mask)
    if mask.all():
        assert geometry.bounds == (0.0, 0.0, mask.shape[1], mask.shape[0])  # pixel edges of the whole tile
    assert (annotation_features(geometry, name="x", color=(1, 2, 3)) == []) == (parts == 0)


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_round_trip_and_match_opencv_components(seed):
    mask = (np.random.default_rng(seed).random((23, 31)) < 0.3 + 0.1 * seed).astype(np.uint8)
    geometry = mask_polygons(mask, simplify=0)
    assert geometry.is_valid and np.array_equal(rasterize(geometry, mask.shape), mask)
    assert (len(geometry.geoms), _holes(geometry)) == _components(mask)
    simple = mask_polygons(mask, simplify=0.5)
    assert simple.is_valid


def test_rings_crossed_by_simplification_are_repaired(monkeypatch):
    calls, make_valid = [], shapely.make_valid
    monkeypatch.setattr(shapely, "make_valid", lambda g: calls.append(g) or make_valid(g))
    mask = (np.random.default_rng(1).random((23, 31)) < 0.5).astype(np.uint8)
    geometry = mask_polygons(mask, simplify=1.0)  # ring by ring, 1 px lets neighbouring rings cross
    assert calls and geometry.is_valid and geometry.geom_type == "MultiPolygon"


# --------------------------------------------------------------------------- features and files


def test_annotation_feature_is_what_qupath_imports():
    geometry = mask_polygons(_mask("### #.# ###"), simplify=0)
    (feature,) = annotation_features(geometry, name="DAB-positive", color=(255, 200, 0),
                                     properties={"name": "tile", "mask_px": np.int64(8)}, affine=[1, 0, 0, 1, 100, 20])
    feature = json.loads(json.dumps(feature))
    props = feature["properties"]
    assert feature["type"] == "Feature" and feature["geometry"]["type"] == "MultiPolygon"
    assert props["objectType"] == "annotation" and props["isLocked"] is False and props["name"] == "tile"
    assert props["classification"] == {"name": "DAB-positive", "color": [255, 200, 0]}
    assert props["measurements"] == {"area_px": 8.0, "mask_px": 8.0}
    assert shape(feature["geometry"]).bounds == (100.0, 20.0, 103.0, 23.0)


def test_nucleus_features_are_equal_area_polygons_on_the_centroid_pixel():
    mask = np.zeros((20, 30), np.uint8)
    mask[10, 12] = 1
    centroids = np.array([[12.2, 9.6], [3.0, 4.0], [40.0, 5.0]], np.float32)  # the last is off the tile
    features = nucleus_features(centroids, np.array([50, 20, 9]), mask)
    polygons = [shape(f["geometry"]) for f in features]
    assert [p.area for p in polygons] == pytest.approx([50, 20, 9], rel=1e-3)
    assert np.allclose([(p.centroid.x, p.centroid.y) for p in polygons], centroids + 0.5, atol=1e-3)
    flags = [f["properties"]["measurements"]["inside_mask"] for f in features]
    assert flags == [1, 0, 0] and sum(flags) == count_in_mask(centroids, mask)
    assert [f["properties"]["classification"]["name"] for f in features] == \
        ["Nucleus (DAB-positive region)", "Nucleus", "Nucleus"]
    assert all(f["properties"]["objectType"] == "detection" for f in features)


def test_write_geojson_is_compact_and_atomic(tmp_path):
    path = write_geojson(tmp_path / "a.geojson", [], {"name": "a"})
    assert path.read_text() == '{"type":"FeatureCollection","properties":{"name":"a"},"features":[]}'
    with pytest.raises(ValueError):
        write_geojson(path, [{"x": float("nan")}])
    assert json.loads(path.read_text())["features"] == [] and [p.name for p in tmp_path.iterdir()] == ["a.geojson"]


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory, real_ihc) -> Path:
    """Shards of three real IHC pairs (two train, one val; H&E = IHC), nuclei by the classical counter."""
    root = tmp_path_factory.mktemp("annotations")
    tiles = {"train": [real_ihc, real_ihc[::-1].copy()], "val": [real_ihc[37:499, 11:300].copy()]}
    for split, images in tiles.items():
        for side in "AB":
            (root / "data" / "tiles" / f"{split}{side}").mkdir(parents=True)
            for i, image in enumerate(images):
                cv2.imwrite(str(root / "data" / "tiles" / f"{split}{side}" / f"{split}_{i}.png"), image[..., ::-1])
    build(detect(root / "data"), root / "shards", BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=2,
                                                               counter="classical", window=128), jobs=1)
    return root / "shards"


def _export(shards: Path, out: Path, *args: str):
    return runner.invoke(app, ["prep", "export-annotations", "--shards", str(shards), "--out", str(out), *args])


def _check_files(shards: Path, out: Path, *, register: bool = False) -> int:
    mask_key, xy_key = ("mask_registered", "centroids_registered") if register else ("mask", "centroids")
    n = 0
    for path in sorted(shards.rglob("shard-*.h5")):
        for sample in iter_samples(path, arrays=(mask_key,)):
            (file,) = out.rglob(f"{sample['name']}.geojson")
            collection = json.loads(file.read_text())
            assert collection["type"] == "FeatureCollection"
            assert collection["properties"]["frame"] == ("he" if register else "ihc")
            region, *nuclei = collection["features"]
            assert region["properties"]["objectType"] == "annotation"
            assert region["properties"]["classification"]["name"] == "DAB-positive"
            assert len(region["properties"]["classification"]["color"]) == 3
            mask = sample[mask_key]
            assert _iou(rasterize(shape(region["geometry"]), mask.shape), mask) >= 0.98
            assert len(nuclei) == len(sample[xy_key]) > 0
            flags = [f["properties"]["measurements"]["inside_mask"] for f in nuclei]
            xy = np.rint(sample[xy_key]).astype(int)
            on = (xy >= 0).all(1) & (xy[:, 0] < mask.shape[1]) & (xy[:, 1] < mask.shape[0])
            assert np.array_equal(np.array(flags)[on], mask[xy[on, 1], xy[on, 0]])
            n += 1
    return n


def test_export_writes_one_qupath_file_per_sample(real_shards, tmp_path):
    result = _export(real_shards, tmp_path / "geo")
    assert result.exit_code == 0, result.output
    assert "3 GeoJSON files" in result.output
    assert sorted(p.relative_to(tmp_path / "geo").as_posix() for p in (tmp_path / "geo").rglob("*.geojson")) == \
        ["tiles/train_0.geojson", "tiles/train_1.geojson", "tiles/val_0.geojson"]
    assert _check_files(real_shards, tmp_path / "geo") == 3
    assert _export(real_shards, tmp_path / "exact", "--simplify", "0").exit_code == 0
    for sample in iter_samples(next(real_shards.rglob("shard-*.h5")), arrays=("mask",)):
        region = json.loads((tmp_path / "exact" / "tiles" / f"{sample['name']}.geojson").read_text())["features"][0]
        assert np.array_equal(rasterize(shape(region["geometry"]), sample["mask"].shape), sample["mask"])


def test_names_in_two_splits_go_to_split_folders_and_pending_nuclei_give_the_mask_only(real_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(real_shards, shards)
    with h5py.File(next((shards / "tiles" / "val").glob("shard-*.h5")), "r+") as f:
        f["samples/00000"].attrs["name"] = "train_0"
        nuclei = f["samples/00000/nuclei"]
        del nuclei["centroids"], nuclei["areas"]
        nuclei.attrs["status"] = "pending"
    result = _export(shards, tmp_path / "geo")
    assert result.exit_code == 0 and "1 without nuclei" in result.output, result.output
    files = sorted(p.relative_to(tmp_path / "geo").as_posix() for p in (tmp_path / "geo").rglob("*.geojson"))
    assert files == ["tiles/train/train_0.geojson", "tiles/train/train_1.geojson", "tiles/val/train_0.geojson"]
    features = json.loads((tmp_path / "geo" / "tiles" / "val" / "train_0.geojson").read_text())["features"]
    assert [f["properties"]["objectType"] for f in features] == ["annotation"]


def test_register_skips_unregistered_samples_then_exports_the_he_frame(synth_data, tmp_path):
    shards = tmp_path / "shards"
    build(detect(synth_data), shards, BuildConfig(mask=MaskConfig(closing_radius=5), shard_size=4,
                                                  counter="classical", window=128), jobs=1)
    result = _export(shards, tmp_path / "geo", "--register")
    assert result.exit_code == 3 and "0 GeoJSON files" in result.output, result.output
    assert result.output.count("filter-misaligned --register' first") == 8 and "synth_00007" in result.output
    result = runner.invoke(app, ["prep", "filter-misaligned", "--shards", str(shards), "--register", "-j", "1",
                                 "--keep-list", str(tmp_path / "keep.csv")])
    assert result.exit_code == 0, result.output
    result = _export(shards, tmp_path / "geo", "--register")
    assert result.exit_code == 0 and "8 GeoJSON files" in result.output, result.output
    assert _check_files(shards, tmp_path / "geo", register=True) == 8


def test_bad_inputs(real_shards, tmp_path):
    result = _export(tmp_path / "nowhere", tmp_path / "geo")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert [ln for ln in result.output.splitlines() if ln.strip()] == [result.output.strip()]
    assert "no manifest.json" in result.output
    assert _export(real_shards, tmp_path / "geo", "--simplify", "-1").exit_code == 1
    shards = tmp_path / "shards"
    shutil.copytree(real_shards, shards)
    victim = next((shards / "tiles" / "val").glob("shard-*.h5"))
    victim.write_bytes(victim.read_bytes()[:4096])
    result = _export(shards, tmp_path / "geo")
    assert result.exit_code == 3 and victim.name in result.output and "2 GeoJSON files" in result.output
    train = next((shards / "tiles" / "train").glob("shard-*.h5"))
    with h5py.File(train, "r+") as f:
        f.attrs["schema_version"] = 1
    result = _export(shards, tmp_path / "geo2")
    assert result.exit_code == 1 and "schema version 1" in result.output and not (tmp_path / "geo2").exists()


def test_export_annotations_has_help():
    result = runner.invoke(app, ["prep", "export-annotations", "--help"])
    assert result.exit_code == 0 and "QuPath" in result.output and "--simplify" in result.output
