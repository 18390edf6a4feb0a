"""Bit-packed disk morphology: identical to scikit-image, borders included."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.morphology import closing, dilation, disk, erosion

from atst_prep import morphology as mo
from atst_prep.stain import dab_channel


@pytest.mark.parametrize("radius", [0, 1, 2, 5, 17, 30, 64])
def test_disk_is_skimage_disk(radius):
    np.testing.assert_array_equal(mo.disk(radius), disk(radius).astype(bool))


def _random_masks():
    rng = np.random.default_rng(0)
    yield rng.random((97, 131)) > 0.97            # sparse points: disks appear whole
    yield rng.random((64, 200)) > 0.5             # dense noise
    blobs = np.zeros((150, 70), bool)
    blobs[10:40, 5:20] = True
    blobs[100:149, 60:70] = True                  # touches two borders
    yield blobs
    yield np.zeros((40, 40), bool)
    yield np.ones((40, 40), bool)


@pytest.mark.parametrize("radius", [1, 3, 8, 30])
def test_dilation_and_erosion_equal_skimage(radius):
    for mask in _random_masks():
        ref_dil = dilation(mask, disk(radius), mode="constant", cval=0)
        np.testing.assert_array_equal(mo.binary_dilation_disk(mask, radius), ref_dil)
        ref_ero = erosion(mask, disk(radius), mode="constant", cval=1)
        np.testing.assert_array_equal(mo.binary_erosion_disk(mask, radius), ref_ero)


@pytest.mark.parametrize("radius", [1, 5, 30])
def test_closing_equals_skimage_closing_with_reflected_borders(radius):
    for mask in _random_masks():
        np.testing.assert_array_equal(mo.binary_closing_disk(mask, radius), closing(mask, disk(radius)))


@pytest.mark.parametrize("radius", [5, 30])
def test_closing_equals_skimage_on_a_real_dab_threshold(real_ihc, radius):
    mask = dab_channel(real_ihc) > 0.12
    np.testing.assert_array_equal(mo.binary_closing_disk(mask, radius), closing(mask, disk(radius)))


def test_widths_wider_than_a_machine_word_are_exact():
    # a row wider than 64 px and a radius above 64 exercise carries across several words
    mask = np.zeros((5, 300), bool)
    mask[2, 150] = True
    out = mo.binary_dilation_disk(mask, 70)
    np.testing.assert_array_equal(out, dilation(mask, disk(70), mode="constant", cval=0))
    assert out[2].sum() == 141


@pytest.mark.parametrize("radius", [63, 64, 100, 200])
def test_large_radii_equal_the_euclidean_distance_reference(radius):
    # growth steps of up to 63 px, chained: every pixel within distance r of a set pixel, and no other
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(radius)
    mask = rng.random((150, 700)) > 0.9995
    mask[0, 699] = mask[149, 0] = True
    np.testing.assert_array_equal(mo.binary_dilation_disk(mask, radius), distance_transform_edt(~mask) <= radius)


def test_negative_radius_is_rejected():
    with pytest.raises(ValueError, match="radius"):
        mo.disk(-1)
