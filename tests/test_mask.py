"""Eq. 1 against the public script's scikit-image pipeline, on real IHC."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import gaussian, threshold_otsu

from atst_prep import mask as mk
from atst_prep.stain import dab_channel, dab_gray
from atst_prep.synth import SynthConfig, render_pair

from .oracle import iou, reference_dab_gray, reference_mask

REQUIRED_IOU = 0.99


@pytest.mark.parametrize("radius", [5, 30])
def test_mask_matches_reference_pipeline_on_real_ihc(real_ihc, real_ihc_1024, radius):
    for image in (real_ihc, real_ihc_1024):
        ours = mk.dab_mask(image, mk.MaskConfig(closing_radius=radius))
        ref = reference_mask(image, radius)
        assert ours.dtype == bool and ours.shape == image.shape[:2]
        assert 0.05 < ref.mean() < 0.95  # a real split, not a trivial mask
        assert iou(ours, ref) >= REQUIRED_IOU


@pytest.mark.parametrize("radius", [5, 30])
def test_mask_matches_reference_on_varied_real_crops(real_ihc_crops, radius):
    for crop in real_ihc_crops:
        assert iou(mk.dab_mask(crop, mk.MaskConfig(closing_radius=radius)), reference_mask(crop, radius)) \
            >= REQUIRED_IOU


def test_without_the_dab_floor_the_mask_is_the_reference_pixel_for_pixel(real_ihc):
    ours = mk.dab_mask(real_ihc, mk.MaskConfig(closing_radius=5, min_dab=0.0))
    assert (ours == reference_mask(real_ihc, 5)).mean() > 0.9999


def test_otsu_threshold_equals_skimage_on_real_gray(real_ihc):
    gray = gaussian(reference_dab_gray(real_ihc), sigma=1)
    ours = mk.otsu_threshold(gray.astype(np.float32))
    assert ours == pytest.approx(threshold_otsu(gray), abs=1e-6)


def test_otsu_threshold_of_constant_image_is_its_value():
    assert mk.otsu_threshold(np.full((5, 5), 0.25, np.float32)) == pytest.approx(0.25)


def test_gaussian_blur_equals_skimage_gaussian(real_ihc):
    gray = dab_gray(dab_channel(real_ihc))
    np.testing.assert_allclose(mk.gaussian_blur(gray, 1.0), gaussian(gray.astype(np.float64), sigma=1), atol=1e-6)


@pytest.mark.parametrize("fill", [255, 242, 200])
def test_blank_tile_gives_an_empty_mask_where_the_public_script_splits_noise(fill):
    rng = np.random.default_rng(0)
    tile = np.clip(fill + rng.normal(0, 2, (256, 256, 3)), 0, 255).astype(np.uint8)
    assert reference_mask(tile, 5).mean() > 0.02  # Otsu splits pure noise
    assert not mk.dab_mask(tile, mk.MaskConfig(closing_radius=5)).any()


def test_dab_free_tissue_gives_an_empty_mask_and_dab_tissue_does_not():
    negative = render_pair(SynthConfig(size=256, negative_pair_rate=1.0), 5)
    positive = render_pair(SynthConfig(size=256, negative_pair_rate=0.0, positive_fraction=(0.4, 0.5)), 5)
    assert not mk.dab_mask(negative.ihc, mk.MaskConfig(closing_radius=5)).any()
    m = mk.dab_mask(positive.ihc, mk.MaskConfig(closing_radius=5))
    truth = positive.truth["positive_mask_ihc"]
    assert m.any()
    assert m[truth].mean() > 5 * m[~truth].mean()  # the mask lands on the true positive region


@pytest.mark.parametrize("field, value", [
    ("sigma", -1.0), ("otsu_bins", 1), ("morph_kernel", 2), ("erode_iterations", -1),
    ("closing_radius", -3), ("closing_radius", 1000), ("min_dab", 1.5),
])
def test_invalid_mask_parameters_are_rejected_with_the_field_named(field, value):
    with pytest.raises(ValueError, match=field):
        mk.MaskConfig(**{field: value})
