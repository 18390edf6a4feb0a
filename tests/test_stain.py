"""Colour deconvolution: equal to scikit-image's rgb2hed, on real and synthetic tiles."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hed

from atst_prep import stain
from atst_prep.synth import SynthConfig, render_pair

from .oracle import reference_dab_gray

# float32 arithmetic on densities of order 1: a few ulp
TOL = 5e-7


def test_unmixing_equals_skimage_rgb2hed_on_real_ihc(real_ihc):
    ref = rgb2hed(real_ihc)
    np.testing.assert_allclose(stain.rgb_to_hed(real_ihc), ref, atol=TOL, rtol=0)
    np.testing.assert_allclose(stain.dab_channel(real_ihc), ref[..., 2], atol=TOL, rtol=0)
    np.testing.assert_allclose(stain.hematoxylin_channel(real_ihc), ref[..., 0], atol=TOL, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_one_pass_dab_and_hema_equal_skimage_on_synthetic_he_and_ihc(seed):
    pair = render_pair(SynthConfig(size=256), seed)
    for rgb in (pair.he, pair.ihc):
        ref = rgb2hed(rgb)
        dab, hema = stain.dab_and_hematoxylin(rgb)
        np.testing.assert_allclose(dab, ref[..., 2], atol=TOL, rtol=0)
        np.testing.assert_allclose(hema, ref[..., 0], atol=TOL, rtol=0)


def test_unmixing_covers_every_byte_value_exactly():
    # every byte value in R and G (B fixed): every table entry is exercised
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack(list(np.meshgrid(values, values, indexing="ij")) + [np.full((256, 256), 7, np.uint8)], axis=-1)
    ref = rgb2hed(rgb)
    np.testing.assert_allclose(stain.rgb_to_hed(rgb), ref, atol=TOL, rtol=0)
    assert stain.rgb_to_hed(rgb).dtype == np.float32
    assert (stain.rgb_to_hed(rgb) >= 0).all()


def test_optical_density_is_skimage_scaled_log():
    rgb = np.array([[[255, 128, 0]]], np.uint8)
    od = stain.optical_density(rgb)[0, 0]
    expected = -np.log(np.maximum(np.array([255, 128, 0]) / 255.0, 1e-6)) / -np.log(1e-6)
    np.testing.assert_allclose(od, expected, rtol=1e-6)
    assert od[0] == 0 and od[2] == pytest.approx(1.0)


def test_dab_gray_equals_hed2rgb_then_rgb2gray(real_ihc):
    ours = stain.dab_gray(stain.dab_channel(real_ihc))
    np.testing.assert_allclose(ours, reference_dab_gray(real_ihc), atol=1e-6, rtol=0)


def test_dab_density_of_gray_inverts_dab_gray():
    for d in (0.0, 0.01, 0.2, 0.9):
        g = float(stain.dab_gray(np.float32([d]))[0])
        assert stain.dab_density_of_gray(g) == pytest.approx(d, abs=1e-5)


@pytest.mark.parametrize("bad", [
    np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32),
    np.zeros((8, 8, 3), np.uint16),
])
def test_unmixing_rejects_anything_but_rgb_uint8(bad):
    with pytest.raises(ValueError, match="uint8 RGB"):
        stain.dab_channel(bad)


def test_dab_channel_is_bit_identical_to_the_one_pass_unmixing(real_ihc):
    """Masks made at build time (one pass) and by dab_mask (dab_channel) must agree to the bit."""
    np.testing.assert_array_equal(stain.dab_channel(real_ihc), stain.dab_and_hematoxylin(real_ihc)[0])
