"""``atst translate``: seamless stitching (identity, seam bound), folders, both directions, exit codes."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from atst_model.infer.stitch import Canvas, blend_weights, tile_grid
from atst_model.infer.translate import load_generator, translate_image
from atst_model.networks import create_network
from atst_model.train.config import TrainerConfig
from atst_model.train.state import save
from cli.main import app

runner = CliRunner()


class Identity(nn.Module):
    """Returns its input: stitching must give the image back exactly."""

    def forward(self, x):
        return x


class TileOffset(nn.Module):
    """Adds one random constant (in [-1, 1] units) per window: the worst case for seams."""

    def __init__(self, amplitude: float) -> None:
        super().__init__()
        self.amplitude, self.g = amplitude, torch.Generator().manual_seed(0)

    def forward(self, x):
        c = (torch.rand(x.shape[0], 1, 1, 1, generator=self.g) * 2 - 1) * self.amplitude
        return x + c


def tiny_checkpoint(folder):
    """A trainer checkpoint of random-weight tiny networks (seeded): ``folder/step-1.pt``."""
    torch.manual_seed(0)
    path = folder / "step-1.pt"
    config = TrainerConfig(g1="g1-tiny", g2="g2-tiny", d="d-tiny", g1_mode="native").to_dict()
    save(path, {"config": config, "models": {"g1": create_network("g1-tiny", mode="native").state_dict(),
                                             "g2": create_network("g2-tiny").state_dict()}})
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    from skimage.data import immunohistochemistry

    img = immunohistochemistry()  # (512, 512, 3) uint8
    folder = tmp_path_factory.mktemp("tiles")
    sizes = {"a": (200, 300), "b": (512, 512), "c": (97, 130)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(np.ascontiguousarray(img[:h, :w]), cv2.COLOR_RGB2BGR))
    return folder, sizes


def test_grid_covers_and_weights_partition():
    w = blend_weights(64, 16)
    assert w.min() > 0 and w.max() == 1
    for h, wd, t, o in [(1, 1, 8, 2), (97, 130, 32, 8), (200, 33, 16, 0), (50, 61, 20, 10)]:
        canvas = Canvas(h, wd, 1, blend_weights(t, o))
        for y0, x0 in tile_grid(h, wd, t, o):
            canvas.add(np.zeros((t, t, 1)), y0, x0)
        assert (canvas.wsum > 0).all()
        if o:  # ramps fall in the margins: the weights sum to exactly 1 inside the image
            np.testing.assert_allclose(canvas.wsum, 1.0, atol=1e-5)


@pytest.mark.parametrize("h,w,tile,overlap", [(97, 131, 32, 8), (1, 1, 16, 4), (65, 33, 16, 0),
                                               (203, 150, 64, 32), (300, 211, 128, 17)])
def test_identity_network_is_exact(h, w, tile, overlap):
    rgb = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = translate_image(Identity(), rgb, tile=tile, overlap=overlap, batch=3, device="cpu")
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).max() == 0


def test_per_tile_offsets_leave_no_seam():
    # Between two windows the offset field is c_a (1 - r) + c_b r with the raised-cosine ramp r, whose step
    # per pixel is <= sin(pi / (2 overlap)); with separable weights the same holds at corners. So the jump
    # between neighbouring pixels is <= max|c_a - c_b| * sin(pi / (2 overlap)) + 1 (uint8 rounding).
    # Without blending the jump would be |c_a - c_b|, up to 2 * amplitude.
    amplitude, overlap = 0.25, 24  # offsets within +-32 grey levels on a mid-grey image (no clipping)
    rgb = np.random.default_rng(1).integers(96, 160, (181, 157, 3), dtype=np.uint8)
    out = translate_image(TileOffset(amplitude), rgb, tile=64, overlap=overlap, batch=4, device="cpu")
    field = out.astype(int) - rgb  # rounded offset field
    jump = max(np.abs(np.diff(field, axis=0)).max(), np.abs(np.diff(field, axis=1)).max())
    bound = 2 * amplitude * 127.5 * math.sin(math.pi / (2 * overlap)) + 1
    assert np.abs(field).max() > 10  # the offsets are really there
    assert jump <= bound, (jump, bound)


def test_folder_he2ihc_and_ihc2he(checkpoint, tiles, tmp_path):
    folder, sizes = tiles
    for direction in ("he2ihc", "ihc2he"):
        out = tmp_path / direction
        result = runner.invoke(app, ["translate", str(checkpoint), str(folder), "--out", str(out),
                                     "--direction", direction, "--tile", "128", "--overlap", "16", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        for name, (h, w) in sizes.items():
            img = cv2.imread(str(out / f"{name}.png"))
            assert img is not None and img.shape == (h, w, 3)


def test_load_generator_picks_the_network(checkpoint):
    g1, g2 = load_generator(checkpoint, "he2ihc"), load_generator(checkpoint, "ihc2he")
    assert type(g1).__name__ == "G1" and g1.config.mode == "native" and type(g2).__name__ == "G2"
    with pytest.raises(ValueError, match="direction"):
        load_generator(checkpoint, "sideways")


def test_missing_checkpoint_exit_1(tiles, tmp_path):
    folder, _ = tiles
    result = runner.invoke(app, ["translate", str(tmp_path / "nope.pt"), str(folder), "--out", str(tmp_path / "o")])
    text = " ".join(result.output.split())  # rich wraps at the test console's width
    assert result.exit_code == 1 and result.output.count("error:") == 1
    assert text.startswith("error:") and "nope.pt: no such checkpoint" in text


def test_not_a_checkpoint_exit_1(tiles, tmp_path):
    folder, _ = tiles
    bogus = tmp_path / "bogus.pt"
    torch.save({"hello": 1}, bogus)
    result = runner.invoke(app, ["translate", str(bogus), str(folder), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "not an ATST trainer checkpoint" in result.output


def test_corrupt_input_exit_3(checkpoint, tiles, tmp_path):
    folder, _ = tiles
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "o"
    result = runner.invoke(app, ["translate", str(checkpoint), str(folder / "c.png"), str(bad), "--out", str(out),
                                 "--tile", "128", "--overlap", "16", "--device", "cpu"])
    assert result.exit_code == 3, result.output
    rejected = [line for line in result.output.splitlines() if "rejected" in line]
    assert len(rejected) == 1 and "broken.png" in rejected[0]
    assert (out / "c.png").exists() and not (out / "broken.png").exists()


def test_two_inputs_with_one_name_are_not_allowed_to_overwrite_each_other(tmp_path):
    import cv2
    from skimage import data

    from atst_model.infer.translate import translate_folder

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "tile.png"), data.immunohistochemistry()[:64, :64])
    result = translate_folder(Identity(), [tmp_path / "a", tmp_path / "b"], tmp_path / "out", tile=32, overlap=8)
    assert len(result.written) == 1 and len(result.rejected) == 1 and "same name" in result.rejected[0]


def test_slide_to_pyramidal_bigtiff(checkpoint, tmp_path):
    # CMU-Small-Region has white background around the tissue: some windows must be skipped, not run.
    pytest.importorskip("imagecodecs")
    import tifffile

    from .realslide import SLIDE

    out = tmp_path / "out"
    result = runner.invoke(app, ["translate", str(checkpoint), str(SLIDE), "--out", str(out),
                                 "--tile", "256", "--overlap", "32", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    skipped = int(result.output.split("background skipped")[0].rsplit("(", 1)[1].split()[0])
    assert skipped >= 1, result.output
    with tifffile.TiffFile(SLIDE) as tf:
        h, w = tf.series[0].levels[0].shape[:2]
    with tifffile.TiffFile(out / f"{SLIDE.stem}.tif") as tf:
        assert tf.is_bigtiff and tf.pages[0].is_tiled
        levels = tf.series[0].levels
        assert levels[0].shape == (h, w, 3) and len(levels) >= 2
        for i, level in enumerate(levels):
            img = level.asarray()
            assert img.shape == (-(-h // 2**i), -(-w // 2**i), 3) and img.dtype == np.uint8
        assert max(levels[-1].shape[:2]) <= 1024
    assert not list(out.glob("*.partial"))


def test_slide_identity_is_exact_and_background_is_white(tmp_path):
    # A synthetic slide with a white margin: band reads + row-strip canvas give the image back exactly
    # where windows run, and skipped (background) windows come out white. zlib: the output is lossless.
    import tifffile

    import atst_model.infer.slide as slide

    rng = np.random.default_rng(0)
    img = np.full((700, 530, 3), 255, np.uint8)
    img[100:420, 60:300] = rng.integers(40, 200, (320, 240, 3), dtype=np.uint8)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, img, tile=(128, 128), photometric="rgb", compression="zlib")
    res = slide.translate_slide(Identity(), path, tmp_path / "o.tif", tile=64, overlap=16, batch=5, device="cpu",
                                compression="zlib")
    assert res.skipped > 0 and res.windows > res.skipped
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif", level=0), img)


class PixelNet(nn.Module):
    """A nonlinear network whose output for a window depends on neighbouring pixels (so window edges differ
    and blending matters) but not on the other windows of its batch (so batch makeup cannot change a bit)."""

    def forward(self, x):
        return torch.tanh(1.3 * x.flip(1) + 0.4 * nn.functional.avg_pool2d(x, 5, 1, 2) - 0.1)


def _reference_pyramid(level0: np.ndarray, max_side: int) -> list[np.ndarray]:
    """Levels as the in-memory writer made them, with odd sides padded by edge repetition before INTER_AREA."""
    levels = [level0]
    while max(levels[-1].shape[:2]) > max_side:
        a = levels[-1]
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
        levels.append(cv2.resize(a, (a.shape[1] // 2, a.shape[0] // 2), interpolation=cv2.INTER_AREA))
    return levels


def _write_reference(path, levels, compression):
    """The previous in-memory writer: whole level arrays, the reduced ones as SubIFDs of level 0."""
    import tifffile

    opts = dict(tile=(256, 256), photometric="rgb", compression=compression, metadata=None)
    if compression == "jpeg":
        opts["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, **opts)
        for level in levels[1:]:
            tw.write(level, subfiletype=1, **opts)


def test_streamed_slide_equals_in_memory_path_bit_for_bit(tmp_path):
    # The real slide through the streaming pipeline (threads, band reads, device row canvas, tile-row TIFF
    # writer, streamed pyramid) against translate_image on the whole level 0 written whole by the
    # previous writer: every level decodes to the same bytes, JPEG included (same pixels in, same tiles out).
    pytest.importorskip("imagecodecs")
    import tifffile

    from atst_model.infer.pyramid import default_compression
    from atst_model.infer.slide import translate_slide

    from .realslide import SLIDE, read_slide

    rgb = read_slide()
    comp = default_compression()
    ref_path, out_path = tmp_path / "ref.tif", tmp_path / "out.tif"
    _write_reference(ref_path, _reference_pyramid(translate_image(PixelNet(), rgb, 256, 32, 4, "cpu"), 1024), comp)
    res = translate_slide(PixelNet(), SLIDE, out_path, tile=256, overlap=32, batch=3, device="cpu",
                          tissue_threshold=0.0)
    assert res.skipped == 0 and (res.height, res.width) == rgb.shape[:2]
    with tifffile.TiffFile(ref_path) as ref, tifffile.TiffFile(out_path) as out:
        # the Aperio layout: level 0, a stripped thumbnail, then the 2 reduced levels, all top-level IFDs
        assert out.is_bigtiff and out.is_svs and len(out.pages) == 4 and not out.pages[1].is_tiled
        assert [lv.shape for lv in out.series[0].levels] == [lv.shape for lv in ref.series[0].levels]
        assert [lv.shape[:2] for lv in out.series[0].levels] == res.levels
        for a, b in zip(out.series[0].levels, ref.series[0].levels):
            assert a.pages[0].compression == b.pages[0].compression and a.pages[0].tile == (256, 256)
            np.testing.assert_array_equal(a.asarray(), b.asarray())


def test_streamed_pyramid_odd_sides_and_odd_chunks(tmp_path):
    # Rows arrive in chunks of 37 (odd: a row waits for its partner); both sides odd at several levels.
    import tifffile

    from atst_model.infer.pyramid import PyramidWriter

    img = np.random.default_rng(3).integers(0, 256, (301, 517, 3), dtype=np.uint8)
    with PyramidWriter(tmp_path / "p.tif", 301, 517, compression="zlib", max_side=40) as writer:
        for y in range(0, 301, 37):
            writer.put(img[y:y + 37])
    ref = _reference_pyramid(img, 40)
    with tifffile.TiffFile(tmp_path / "p.tif") as tf:
        levels = tf.series[0].levels
        assert len(levels) == len(ref) == 5
        for level, expected in zip(levels, ref):
            np.testing.assert_array_equal(level.asarray(), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tif"]


def test_slide_memory_is_bounded(tmp_path):
    # Level 0 used to be one (H, W, 3) uint8 numpy array (tracemalloc sees numpy's buffers); now the traced
    # peak must stay within the module docstring's O(tile x width) bound, a fraction of H * W * 3 for a
    # tall slide. A first run on a small slide does the lazy imports, whose memory is not the pipeline's.
    import tracemalloc

    import tifffile

    from atst_model.infer.slide import translate_slide

    h, w, tile = 12000, 256, 128
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(yy // 7 + xx) % 200, (yy // 3) % 180, (xx * 3) % 190], axis=-1).astype(np.uint8)
    del yy, xx
    path, small = tmp_path / "tall.tif", tmp_path / "small.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib")
    tifffile.imwrite(small, img[:300], tile=(256, 256), photometric="rgb", compression="zlib")
    kwargs = dict(tile=tile, overlap=16, batch=8, device="cpu", compression="zlib")
    translate_slide(Identity(), small, tmp_path / "small-out.tif", **kwargs)
    tracemalloc.start()
    try:
        res = translate_slide(Identity(), path, tmp_path / "o.tif", **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.windows - res.skipped > 100
    assert peak < 32 * tile * (w + tile) + 2048 * w, (peak, 32 * tile * (w + tile) + 2048 * w)
    assert peak < h * w * 3 / 4, (peak, h * w * 3)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o.tif", level=0), img)


class Failing(nn.Module):
    """Identity that raises ``exc`` on its ``after``-th call."""

    def __init__(self, exc: BaseException, after: int) -> None:
        super().__init__()
        self.exc, self.after, self.calls = exc, after, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.after:
            raise self.exc
        return x


@pytest.mark.parametrize("where", ["network", "interrupt", "reader", "writer"])
def test_slide_failure_propagates_and_leaves_no_file(where, monkeypatch, tmp_path):
    # An error in the calling thread (network, Ctrl-C) or in the reader or writer thread reaches the caller
    # as itself; no output, no .partial and no temporary file remain, and no thread is left running.
    import threading

    import tifffile

    import atst_model.infer.pyramid as pyramid
    import atst_model.infer.slide as slide

    img = np.random.default_rng(0).integers(40, 200, (700, 530, 3), dtype=np.uint8)
    src = tmp_path / "src" / "s.tif"
    src.parent.mkdir()
    tifffile.imwrite(src, img, tile=(128, 128), photometric="rgb", compression="zlib")
    net, expected = Identity(), RuntimeError
    if where == "network":
        net = Failing(RuntimeError("boom"), after=6)
    elif where == "interrupt":
        net, expected = Failing(KeyboardInterrupt(), after=6), KeyboardInterrupt
    elif where == "reader":
        rows, calls = slide.SlideReader.rows, []

        def failing_rows(self, y0, y1):
            calls.append(y0)
            if len(calls) == 4:
                raise RuntimeError("boom")
            return rows(self, y0, y1)

        monkeypatch.setattr(slide.SlideReader, "rows", failing_rows)
    else:
        strip_tiles, calls = pyramid.PyramidWriter._strip_tiles, []

        def failing_strip_tiles(strip):  # in the writer thread, on level 0's second tile row
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("boom")
            return strip_tiles(strip)

        monkeypatch.setattr(pyramid.PyramidWriter, "_strip_tiles", staticmethod(failing_strip_tiles))
    out = tmp_path / "out"
    out.mkdir()
    threads = threading.active_count()
    with pytest.raises(expected):
        slide.translate_slide(net, src, out / "s.tif", tile=64, overlap=16, batch=4, device="cpu",
                              compression="zlib")
    assert list(out.iterdir()) == []
    assert threading.active_count() == threads


def test_a_full_disk_stops_translate_with_one_line(checkpoint, tmp_path, monkeypatch):
    """A write error on the output side is the user's to fix: one line naming the file, no traceback."""
    import errno

    import atst_model.infer.run as slide_module  # where translate's library entry finds translate_slide

    from .realslide import SLIDE

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(slide_module, "translate_slide", full_disk)
    result = CliRunner().invoke(app, ["translate", str(checkpoint), str(SLIDE), "--out", str(tmp_path / "out")])
    flat = result.output.replace("\n", "")  # rich wraps long lines at the test terminal's width
    assert result.exit_code == 1, result.output
    assert "cannot write" in flat and "CMU-Small-Region.tif" in flat
    assert "No space left" in flat and "Traceback" not in flat
