"""Reading tiles: every kind of bad file gives one clear reason naming the file."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from atst_prep.images import InputError, blank_reason, read_rgb, tissue_fraction

from .badfiles import BAD_PAIRS, add_bad_pairs


@pytest.fixture()
def bad_dirs(tmp_path, synth_data):
    he_dir, ihc_dir = tmp_path / "he", tmp_path / "ihc"
    he_dir.mkdir()
    ihc_dir.mkdir()
    root = synth_data / "MIST" / "HER2" / "TrainValAB"
    add_bad_pairs(he_dir, ihc_dir, root / "trainA" / "synth_00000.jpg", root / "trainB" / "synth_00000.jpg")
    return he_dir, ihc_dir


def test_good_jpeg_reads_as_rgb_uint8(synth_data):
    path = synth_data / "MIST" / "HER2" / "TrainValAB" / "trainB" / "synth_00000.jpg"
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (256, 256, 3)
    np.testing.assert_array_equal(rgb, cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("name", [n for n, (side, _) in BAD_PAIRS.items() if n not in ("bad_size", "bad_blank")])
def test_each_bad_file_is_rejected_with_its_reason_and_path(bad_dirs, name):
    side, reason = BAD_PAIRS[name]
    folder = bad_dirs[0] if side == "he" else bad_dirs[1]
    path = next(folder.glob(f"{name}.*"))
    with pytest.raises(InputError) as info:
        read_rgb(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_folder_are_rejected(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_rgb(tmp_path / "nope.png")
    with pytest.raises(InputError, match="folder"):
        read_rgb(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_rejected(tmp_path):
    path = tmp_path / "locked.png"
    cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    path.chmod(0)
    with pytest.raises(InputError, match="cannot be read"):
        read_rgb(path)


def test_jpeg_with_bytes_after_the_end_marker_is_accepted(tmp_path, synth_data):
    good = synth_data / "MIST" / "HER2" / "TrainValAB" / "trainA" / "synth_00001.jpg"
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(good.read_bytes() + b"\x00" * 100)
    assert read_rgb(padded).shape == (256, 256, 3)


def test_blank_and_tissue_tiles_are_told_apart(real_ihc):
    white = np.full((256, 256, 3), 243, np.uint8)
    black = np.zeros((256, 256, 3), np.uint8)
    assert "uniform" in blank_reason(white, 0.01)[0]
    assert "uniform" in blank_reason(black, 0.01)[0]
    glass = np.clip(np.random.default_rng(0).normal(240, 4, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert "tissue" in blank_reason(glass, 0.01)[0]
    reason, fraction = blank_reason(real_ihc, 0.01)
    assert reason is None and fraction == tissue_fraction(real_ihc) > 0.5


def test_tissue_fraction_equals_the_optical_density_definition(real_ihc):
    sub = real_ihc[::4, ::4].astype(np.float64)
    od = -np.log10(np.maximum(sub, 1) / 255).sum(axis=2)
    assert tissue_fraction(real_ihc) == pytest.approx((od > 0.15).mean(), abs=1e-4)
