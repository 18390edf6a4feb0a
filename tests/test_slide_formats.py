"""Slides in and out: what OpenSlide and tiffslide (the readers users have) see of our pyramids, slides of
several vendors' formats read through OpenSlide, and the virtual IHC's positive region as GeoJSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from atst_model.infer.pyramid import pyramid_sizes
from atst_model.infer.slide import translate_slide
from atst_model.infer.slide_io import OpenSlideReader, TiffSlideReader, is_slide, open_slide
from atst_model.infer.translate import translate_image

from .realslide import SLIDE, read_slide
from .test_translate import tiny_checkpoint

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")
tifffile = pytest.importorskip("tifffile")


class Swap(nn.Module):
    """A per-pixel network (channels reversed, then darkened): the same output whatever the window."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x.flip(1) * 0.9 - 0.1


def _halvings(level0: np.ndarray, n: int) -> list[np.ndarray]:
    """float64 reference of the writer's 2 x 2 box means, last row / column repeated at odd sides."""
    levels = [level0]
    for _ in range(n - 1):
        a = levels[-1].astype(np.float64)
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
        m = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4
        levels.append(np.floor(m + 0.5).astype(np.uint8))
    return levels


@pytest.fixture(scope="module")
def stained(tmp_path_factory):
    """The CMU slide stained by :class:`Swap` with every window run, zlib tiles (lossless)."""
    out = tmp_path_factory.mktemp("stained") / "CMU-Small-Region.tif"
    res = translate_slide(Swap(), SLIDE, out, tile=512, overlap=64, batch=4, device="cpu", tissue_threshold=0.0,
                          compression="zlib")
    return out, res


def test_openslide_and_tiffslide_see_every_level_the_pixel_size_and_the_pixels(stained):
    out, res = stained
    rgb = read_slide()
    expected = _halvings(translate_image(Swap(), rgb, 512, 64, 4, "cpu"), len(res.levels))
    assert res.levels == pyramid_sizes(*rgb.shape[:2]) and len(res.levels) == 3
    dims = [(w, h) for h, w in res.levels]
    for Reader, key in ((openslide.OpenSlide, "openslide"), (tiffslide.TiffSlide, "tiffslide")):
        s = Reader(str(out))
        try:
            assert s.level_count == len(res.levels), Reader
            assert tuple(s.level_dimensions) == tuple(dims)
            assert float(s.properties[f"{key}.mpp-x"]) == pytest.approx(0.499)
            assert float(s.properties[f"{key}.mpp-y"]) == pytest.approx(0.499)
            assert float(s.properties[f"{key}.objective-power"]) == 20
            for level, ref in enumerate(expected):
                got = np.asarray(s.read_region((0, 0), level, dims[level]))
                np.testing.assert_array_equal(got[..., :3], ref, err_msg=f"{key} level {level}")
        finally:
            s.close()
    s = openslide.OpenSlide(str(out))
    assert s.properties["openslide.vendor"] == "aperio" and "thumbnail" in s.associated_images
    s.close()


def test_tifffile_sees_one_series_and_the_generic_tags(stained):
    out, res = stained
    with tifffile.TiffFile(out) as tf:
        assert tf.is_svs and [lv.shape[:2] for lv in tf.series[0].levels] == res.levels
        page = tf.pages[0]
        assert "MPP = 0.499" in page.description and "AppMag = 20" in page.description
        assert page.get_resolution() == pytest.approx((1e4 / 0.499, 1e4 / 0.499))  # pixels per cm
        assert tf.pages[2].get_resolution() == pytest.approx((1e4 / (0.499 * 2220 / 1110),
                                                              1e4 / (0.499 * 2967 / 1484)))


def _generic_tiff(path, img, mpp=None, tile=256):
    kw = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if mpp else {}
    tifffile.imwrite(path, img, tile=(tile, tile), photometric="rgb", compression="zlib", metadata=None, **kw)


def _philips_tiff(path, img, spacing_mm=0.00025):
    """A one-level Philips TIFF as OpenSlide's philips-tiff backend reads it (Software tag, DPUfsImport XML)."""
    spacing = f'&quot;{spacing_mm}&quot; &quot;{spacing_mm}&quot;'
    attr = '<Attribute Name="{}" Group="0x0" Element="0x0" PMSVR="{}">{}</Attribute>'
    rep = ('<DataObject ObjectType="PixelDataRepresentation">'
           + attr.format("PIIM_PIXEL_DATA_REPRESENTATION_NUMBER", "IUInt16", 0)
           + attr.format("DICOM_PIXEL_SPACING", "IDoubleArray", spacing) + "</DataObject>")
    image = ('<DataObject ObjectType="DPScannedImage">' + attr.format("PIM_DP_IMAGE_TYPE", "IString", "WSI")
             + attr.format("DICOM_PIXEL_SPACING", "IDoubleArray", spacing)
             + '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" Group="0x0" Element="0x0" '
               f'PMSVR="IDataObjectArray"><Array>{rep}</Array></Attribute></DataObject>')
    xml = ('<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
           '<Attribute Name="PIM_DP_SCANNED_IMAGES" Group="0x0" Element="0x0" PMSVR="IDataObjectArray">'
           f'<Array>{image}</Array></Attribute></DataObject>')
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib", description=xml,
                     software="Philips DP v1.0 (test)", metadata=None)


@pytest.fixture(scope="module")
def region_rgb():
    return np.ascontiguousarray(read_slide()[600:1500, 700:1900])  # (900, 1200): tissue and background


@pytest.mark.parametrize("fmt,vendor,mpp", [("generic", "generic-tiff", 0.5), ("philips", "philips", 0.25),
                                            ("aperio", "aperio", 0.499)])
def test_openslide_reads_each_format_as_tifffile_does(fmt, vendor, mpp, region_rgb, tmp_path):
    if fmt == "aperio":
        path = SLIDE
    else:
        path = tmp_path / ("s.tiff" if fmt == "philips" else "s.tif")
        (_philips_tiff(path, region_rgb) if fmt == "philips" else _generic_tiff(path, region_rgb, mpp))
    with open_slide(path) as auto, TiffSlideReader(path) as tf:
        assert isinstance(auto, OpenSlideReader) and auto.meta.vendor == vendor
        assert auto.meta.mpp == pytest.approx((mpp, mpp))
        assert (auto.height, auto.width) == (tf.height, tf.width)
        for y0, y1 in ((0, 1), (100, 357), (tf.height - 200, tf.height)):
            np.testing.assert_array_equal(auto.rows(y0, y1), tf.rows(y0, y1))
    if fmt != "philips":  # tifffile has no pixel size for Philips' XML
        with TiffSlideReader(path) as tf:
            assert tf.meta.mpp == pytest.approx((mpp, mpp))


def test_a_stripped_tiff_falls_back_to_tifffile_and_a_stranger_is_no_slide(region_rgb, tmp_path):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.tile(region_rgb, (5, 1, 1)), photometric="rgb", metadata=None)  # 4500 px, stripped
    assert is_slide(path)
    with open_slide(path) as r:
        assert isinstance(r, TiffSlideReader) and r.meta.mpp is None
    junk = tmp_path / "x.mrxs"
    junk.write_bytes(b"not a slide")
    assert not is_slide(junk)


def test_readers_give_the_same_stained_slide(region_rgb, tmp_path):
    src = tmp_path / "s.tif"
    _generic_tiff(src, region_rgb, 0.5)
    a = translate_slide(Swap(), src, tmp_path / "a.tif", tile=256, overlap=32, device="cpu", compression="zlib")
    b = translate_slide(Swap(), src, tmp_path / "b.tif", tile=256, overlap=32, device="cpu", compression="zlib",
                        reader="tifffile")
    assert (a.reader, b.reader) == ("openslide", "tifffile") and a.meta.mpp == b.meta.mpp == (0.5, 0.5)
    for level in range(len(a.levels)):
        np.testing.assert_array_equal(tifffile.imread(a.path, level=level), tifffile.imread(b.path, level=level))


def test_mpp_option_only_where_the_slide_has_none(region_rgb, tmp_path):
    bare, tagged = tmp_path / "bare.tif", tmp_path / "tagged.tif"
    _generic_tiff(bare, region_rgb)
    _generic_tiff(tagged, region_rgb, 0.5)
    none = translate_slide(Swap(), bare, tmp_path / "n.tif", tile=256, overlap=32, device="cpu")
    given = translate_slide(Swap(), bare, tmp_path / "g.tif", tile=256, overlap=32, device="cpu", mpp=0.25)
    kept = translate_slide(Swap(), tagged, tmp_path / "k.tif", tile=256, overlap=32, device="cpu", mpp=0.25)
    assert none.meta.mpp is None and "openslide.mpp-x" not in openslide.OpenSlide(str(none.path)).properties
    for res, mpp in ((given, 0.25), (kept, 0.5)):
        for s, key in ((openslide.OpenSlide(str(res.path)), "openslide"), (tiffslide.TiffSlide(res.path), "tiffslide")):
            assert float(s.properties[f"{key}.mpp-x"]) == pytest.approx(mpp)
            assert s.properties.get(f"{key}.objective-power") in (None, "")
            s.close()


def test_transparent_pixels_become_the_background():
    class Fake:
        def read_region(self, location, level, size):
            from PIL import Image

            a = np.zeros((size[1], size[0], 4), np.uint8)
            a[:, : size[0] // 2] = (10, 20, 30, 255)
            return Image.fromarray(a, "RGBA")

    reader = OpenSlideReader.__new__(OpenSlideReader)
    reader._slide, reader.height, reader.width = Fake(), 4, 6
    reader._background = np.float32([255, 255, 255])
    rows = reader.rows(0, 4)
    assert (rows[:, :3] == (10, 20, 30)).all() and (rows[:, 3:] == 255).all()


def test_cli_translates_a_philips_slide_and_says_its_pixel_size(region_rgb, tmp_path):
    from cli.main import app

    src = tmp_path / "in" / "p.tiff"
    src.parent.mkdir()
    _philips_tiff(src, np.tile(region_rgb, (5, 1, 1)))  # 4500 px tall: a slide
    ckpt = tiny_checkpoint(tmp_path)
    result = CliRunner().invoke(app, ["translate", str(ckpt), str(src.parent), "--out", str(tmp_path / "out"),
                                      "--tile", "256", "--overlap", "32"])
    assert result.exit_code == 0, result.output
    assert "0.25 um/px" in result.output
    s = openslide.OpenSlide(str(tmp_path / "out" / "p.tif"))
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25) and s.level_count == 4  # 4500 -> 563 px
    s.close()
    bad = CliRunner().invoke(app, ["translate", str(ckpt), str(src), "--out", str(tmp_path / "o2"), "--mpp", "-1"])
    assert bad.exit_code == 1 and "--mpp" in bad.output and "Traceback" not in bad.output


# --- the virtual IHC's positive region (translate --annotations) ----------------------------------------------


@pytest.fixture(scope="module")
def uneven_ihc(real_ihc):
    """Real IHC tiled to 1100 x 1300 px, stained unevenly (DAB strength varies across the image)."""
    img = np.tile(real_ihc, (3, 3, 1))[:1100, :1300].astype(np.float32)
    ramp = np.linspace(0.6, 1.0, img.shape[1], dtype=np.float32)[None, :, None]
    return np.clip(255 - (255 - img) * ramp, 0, 255).astype(np.uint8)


def _windows_reference(fake, window, config):
    from atst_prep.mask import dab_mask

    ref = np.zeros(fake.shape[:2], bool)
    for y in range(0, fake.shape[0], window):
        for x in range(0, fake.shape[1], window):
            ref[y:y + window, x:x + window] = dab_mask(fake[y:y + window, x:x + window], config)
    return ref


def _feed(region, fake, he, step):
    for y in range(0, fake.shape[0], step):
        region.add(fake[y:y + step], he[y:y + step])


@pytest.mark.parametrize("radius", [5, 30])
def test_positive_region_is_eq1_per_window_whatever_the_row_chunks(uneven_ihc, radius):
    from atst_model.infer.annotate import PositiveRegion
    from atst_prep.images import tissue_mask
    from atst_prep.mask import MaskConfig

    config = MaskConfig(closing_radius=radius)
    ref = _windows_reference(uneven_ihc, 512, config)
    assert 0.05 < ref.mean() < 0.95
    region = PositiveRegion(*uneven_ihc.shape[:2], 512, config, mpp=(0.5, 0.5))
    _feed(region, uneven_ihc, uneven_ihc, 37)
    np.testing.assert_array_equal(region.mask, ref)
    s = region.summary()
    tissue = tissue_mask(uneven_ihc)
    assert (s.positive_px, s.tissue_px, s.positive_in_tissue_px) == (ref.sum(), tissue.sum(), (ref & tissue).sum())
    assert s.measurements()["Positive area um^2"] == pytest.approx(ref.sum() * 0.25)


def test_positive_region_reduced_mask_is_the_majority_of_each_block(uneven_ihc):
    from atst_model.infer.annotate import PositiveRegion, mask_factor
    from atst_prep.mask import MaskConfig

    h, w = uneven_ihc.shape[:2]
    assert mask_factor(h, w, limit=h * w // 9) == 4
    region = PositiveRegion(h, w, 512, MaskConfig(closing_radius=5), max_mask_px=h * w // 9)
    _feed(region, uneven_ihc, uneven_ihc, 100)
    ref = _windows_reference(uneven_ihc, 512, MaskConfig(closing_radius=5)).astype(np.float64)
    f = 4
    expected = np.zeros((-(-h // f), -(-w // f)), bool)
    for i in range(expected.shape[0]):
        for j in range(expected.shape[1]):
            expected[i, j] = ref[i * f:(i + 1) * f, j * f:(j + 1) * f].mean() >= 0.5
    np.testing.assert_array_equal(region.mask.astype(bool), expected)


def test_positive_region_geojson_draws_the_mask_at_level_0(uneven_ihc, tmp_path):
    from atst_model.infer.annotate import NAME, PositiveRegion
    from atst_prep.annotations import rasterize
    from atst_prep.mask import MaskConfig

    h, w = uneven_ihc.shape[:2]
    for limit, iou_min in ((1 << 26, 0.98), (h * w // 4, 0.9)):  # full resolution, then a 2x reduced mask
        region = PositiveRegion(h, w, 512, MaskConfig(closing_radius=5), mpp=(0.5, 0.5), max_mask_px=limit)
        _feed(region, uneven_ihc, uneven_ihc, 512)
        summary = region.write(tmp_path / "r.geojson")
        doc = json.loads((tmp_path / "r.geojson").read_text())
        assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 1
        feature = doc["features"][0]
        props = feature["properties"]
        assert props["objectType"] == "annotation" and props["classification"]["name"] == NAME
        assert props["measurements"]["Positive area px"] == summary.positive_px
        import shapely.geometry

        drawn = rasterize(shapely.geometry.shape(feature["geometry"]), (h, w)).astype(bool)
        truth = _windows_reference(uneven_ihc, 512, MaskConfig(closing_radius=5))
        iou = (drawn & truth).sum() / (drawn | truth).sum()
        assert iou >= iou_min, (limit, iou)


def test_translate_slide_annotates_the_rows_it_writes(tmp_path):
    # The annotation must see the fake rows and the H&E rows of the same place: compare with the region
    # built from translate_image's output and the slide read whole.
    from atst_model.infer.annotate import PositiveRegion
    from atst_prep.mask import MaskConfig

    config = MaskConfig(closing_radius=5)
    res = translate_slide(Swap(), SLIDE, tmp_path / "s.tif", tile=512, overlap=64, batch=4, device="cpu",
                          tissue_threshold=0.0, compression="zlib", annotations=tmp_path / "s.geojson",
                          mask_config=config)
    rgb = read_slide()
    fake = translate_image(Swap(), rgb, 512, 64, 4, "cpu")
    ref = PositiveRegion(*rgb.shape[:2], 512, config, mpp=(0.499, 0.499))
    _feed(ref, fake, rgb, 300)
    assert res.region == ref.summary() and 0 < res.region.positive_px
    assert 0 < res.region.fraction_of_tissue < 1
    doc = json.loads((tmp_path / "s.geojson").read_text())
    assert doc["features"][0]["properties"]["measurements"]["Positive area um^2"] > 0


def test_cli_annotations_for_the_demo_slide(tmp_path):
    from cli.main import app

    ckpt = tiny_checkpoint(tmp_path)
    out = tmp_path / "translated"
    result = CliRunner().invoke(app, ["translate", str(ckpt), str(SLIDE), "--out", str(out), "--annotations",
                                      "-r", "5"])
    assert result.exit_code == 0, result.output
    assert "CMU-Small-Region.geojson: DAB-positive" in result.output and "0.499 um/px, 20x" in result.output
    doc = json.loads((out / "CMU-Small-Region.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and doc["properties"]["closing_radius"] == 5
    assert doc["properties"]["source"] == SLIDE.name
    assert all(f["properties"]["objectType"] == "annotation" for f in doc["features"])


def test_a_failure_while_annotating_leaves_no_files_and_no_threads(tmp_path, monkeypatch):
    import threading

    from atst_model.infer.annotate import PositiveRegion

    def boom(self, n):
        raise RuntimeError("boom")

    monkeypatch.setattr(PositiveRegion, "_window_row", boom)  # in the annotator's thread
    out = tmp_path / "out"
    out.mkdir()
    threads = threading.active_count()
    with pytest.raises(RuntimeError, match="boom"):
        translate_slide(Swap(), SLIDE, out / "s.tif", tile=512, overlap=64, batch=4, device="cpu",
                        annotations=out / "s.geojson")
    assert list(out.iterdir()) == []
    assert threading.active_count() == threads
