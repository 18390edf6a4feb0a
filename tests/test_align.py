"""Alignment scoring, selection and registration as pure functions (atst_prep.align).

Accuracy is pinned on synthetic pairs (exact truth) and on the real H&E
slide of ``tests/data`` re-rendered as an IHC-like image under known shifts,
at 512 px tiles (the limits scale with the tile: 32 px at 1024 is 16 px here).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from atst_prep.align.realpairs import misaligned_pair
from atst_prep.align.register import register_image, register_points
from atst_prep.align.score import (
    AlignConfig,
    Alignment,
    align_pair,
    combined_score,
    dice,
    hann,
    ncc,
    phase_correlation,
    tissue_region,
)
from atst_prep.align.select import Decision, Selection, select
from atst_prep.stain import dab_and_hematoxylin
from atst_prep.synth import SynthConfig, render_pair

SIZE = 512
#: 512 px tiles showing a 1024 px tile's field of view, as MIST tiles reduced by 2.
SYNTH = SynthConfig(size=SIZE, scale=0.5, max_shift=64, max_rotation=10, elastic_amplitude=1.0)
LIMIT = 16.0  # px: the default shift limit (32 px at 1024) at 512 px


def _align(he, ihc, config=AlignConfig()):
    return align_pair(he, dab_and_hematoxylin(ihc)[1], ihc, config)


def _texture(seed=0, shape=(256, 256)) -> np.ndarray:
    """Band-limited noise, like a reduced hematoxylin density (blurred by ~1 px)."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random(shape, dtype=np.float32), (0, 0), 1.0) * 10


# --------------------------------------------------------------------------- building blocks


def test_phase_correlation_reports_where_b_content_sits_relative_to_a_and_leaves_inputs_alone():
    big = _texture(0, (320, 320))
    a, b = big[32:-32, 32:-32], np.roll(big, (-3, 7), axis=(0, 1))[32:-32, 32:-32]  # content moves +7 in x, -3 in y
    a0, b0 = a.copy(), b.copy()
    dx, dy, peak = phase_correlation(a - a.mean(), b - b.mean(), hann(a.shape))
    assert (dx, dy) == pytest.approx((7, -3), abs=0.05) and peak > 0.5
    phase_correlation(a, b, hann(a.shape))
    np.testing.assert_array_equal(a, a0)  # cv2.phaseCorrelate (OpenCV 5.0) would have windowed them in place
    np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("shift", [(3.4, -1.7), (-0.5, 0.25), (12.8, 9.6)])
def test_phase_correlation_is_sub_pixel(shift):
    a = _texture(1, (320, 320))
    moved = cv2.warpAffine(a, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (320, 320), flags=cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REFLECT)
    a, moved = a[32:-32, 32:-32], moved[32:-32, 32:-32]
    dx, dy, _ = phase_correlation(a - a.mean(), moved - moved.mean(), hann(a.shape))
    assert (dx, dy) == pytest.approx(shift, abs=0.25)  # px at the working resolution: 1 px at 1024


def test_phase_correlation_is_sub_pixel_on_the_real_ihc_sample(real_ihc):
    # Why ours is kept over cv2.phaseCorrelate (benchmarks/phase_correlation.py): on this image, moved
    # and rounded to bytes as a scanned tile is, ours errs 0.05 px on average, cv2's 5x5 centroid 0.22 px.
    from atst_prep.stain import HEMATOXYLIN, stain_channel

    def hematoxylin(rgb):
        hema = cv2.GaussianBlur(stain_channel(np.ascontiguousarray(rgb[40:-40, 40:-40]), HEMATOXYLIN), (0, 0), 1.0)
        return hema - hema.mean()

    a = hematoxylin(real_ihc)
    for shift in ((12.3, -7.6), (-30.5, 18.25), (0.4, 35.7), (-5.7, -20.2)):
        m = np.float32([[1, 0, -shift[0]], [0, 1, -shift[1]]])  # out(p) = rgb(p - shift)
        moved = cv2.warpAffine(real_ihc.astype(np.float32), m, real_ihc.shape[1::-1],
                               flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)
        b = hematoxylin(np.clip(np.rint(moved), 0, 255).astype(np.uint8))
        dx, dy, _ = phase_correlation(a, b, hann(a.shape))
        assert math.hypot(dx - shift[0], dy - shift[1]) < 0.12, shift


def test_ncc_and_dice_on_constructed_cases():
    a = _texture(2)
    everywhere = np.ones(a.shape, bool)
    assert ncc(a, a, everywhere) == pytest.approx(1.0)
    assert ncc(a, 3 * a + 2, everywhere) == pytest.approx(1.0)
    assert ncc(a, -a, everywhere) == pytest.approx(-1.0)
    assert ncc(a, np.zeros_like(a), everywhere) == 0.0  # flat: no correlation, no NaN
    assert abs(ncc(a, _texture(3), everywhere)) < 0.2
    left, right = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    left[:, :6], right[:, 4:] = True, True  # 60 px each, 20 in common
    assert dice(left, right, np.ones((10, 10), bool)) == pytest.approx(2 * 20 / 120)
    assert dice(left, right, np.zeros((10, 10), bool)) == 1.0


def test_score_halves_at_each_tolerance_and_ignores_anticorrelation():
    assert combined_score(1.0, 1.0, 32.0, 0.0, 32.0, 5.0) == pytest.approx(0.5)
    assert combined_score(1.0, 1.0, 0.0, -5.0, 32.0, 5.0) == pytest.approx(0.5)
    assert combined_score(0.8, 0.9, 64.0, 0.0, 32.0, 5.0) == pytest.approx(0.8 * 0.9 / 16)
    assert combined_score(-0.4, 1.0, 0.0, 0.0, 32.0, 5.0) == 0.0
    assert AlignConfig().shift_tolerance_px((512, 512)) == 16.0


def test_tissue_region_counts_pale_ihc_stroma_as_tissue():
    pair = render_pair(SYNTH, 5, shift=(0, 0), rotation=0)
    he, ihc = tissue_region(pair.he), tissue_region(pair.ihc)
    assert dice(he, ihc, np.ones(he.shape, bool)) > 0.9


# --------------------------------------------------------------------------- accuracy (synthetic)


@pytest.mark.parametrize("seed, shift, rotation", [
    (1, (0.0, 0.0), 0.0), (2, (2.6, -1.3), 0.8), (3, (-21.5, 14.0), -1.5), (4, (40.2, -25.7), 1.2),
    (5, (-60.0, 8.0), 0.0), (6, (5.0, 3.0), 7.0), (7, (-12.0, -30.0), -8.5),
])
def test_shift_and_rotation_of_synthetic_pairs_are_found(seed, shift, rotation):
    pair = render_pair(SYNTH, seed, shift=shift, rotation=rotation)
    a = _align(pair.he, pair.ihc)
    assert a.status == "done"
    assert math.hypot(a.shift_x - shift[0], a.shift_y - shift[1]) <= 2.0
    assert a.rotation == pytest.approx(rotation, abs=0.4)
    assert a.similarity > 0.5 and a.overlap > 0.8


def test_non_square_tiles_whose_side_is_no_multiple_of_the_reduction_are_aligned():
    pair = render_pair(SYNTH, 8, shift=(-9.5, 13.0), rotation=0.0)
    he, ihc = np.ascontiguousarray(pair.he[:389, :509]), np.ascontiguousarray(pair.ihc[:389, :509])
    a = _align(he, ihc)
    assert a.status == "done" and math.hypot(a.shift_x + 9.5, a.shift_y - 13.0) <= 2.0


def test_misaligned_synthetic_pairs_are_dropped_and_aligned_ones_kept():
    cases = [((3, -2), 0.5, True), ((-4, 6), -1.0, True), ((1, 1), 1.8, True),
             ((14, 14), 0.0, False), ((-25, 5), 1.0, False), ((2, -3), 6.5, False), ((2, 2), -8.0, False)]
    alignments = []
    for i, (shift, rotation, _) in enumerate(cases):
        pair = render_pair(SYNTH, 20 + i, shift=shift, rotation=rotation)
        alignments.append(_align(pair.he, pair.ihc))
    decisions = select(alignments, [SIZE] * len(cases), ["train"] * len(cases))
    assert [d.kept for d in decisions] == [k for *_, k in cases]
    assert [d.rule for d in decisions[3:]] == ["shift", "shift", "rotation", "rotation"]


def test_blank_tissue_is_unscorable_with_a_reason():
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(243, 1.5, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    speck = glass.copy()
    cv2.circle(speck, (100, 100), 30, (120, 60, 160), -1)  # ~1 % tissue
    a = _align(speck, speck)
    assert a.status == "unscorable" and "too little tissue" in a.reason and math.isnan(a.score)
    flat_ihc = np.full((SIZE, SIZE, 3), 200, np.uint8)  # dense but without any hematoxylin structure
    pair = render_pair(SYNTH, 1)
    a = align_pair(pair.he, np.zeros((SIZE, SIZE), np.float32), flat_ihc)
    assert a.status == "unscorable" and "contrast" in a.reason
    a = align_pair(pair.he, np.zeros((SIZE // 2, SIZE // 2), np.float32), pair.ihc)
    assert a.status == "unscorable" and "differ in size" in a.reason


# --------------------------------------------------------------------------- accuracy (real tissue)


@pytest.fixture(scope="module")
def slide():
    pytest.importorskip("imagecodecs", reason="reading the SVS slide's JPEG tiles needs imagecodecs")
    from .realslide import read_slide

    return read_slide()


def test_real_tissue_shifts_are_found_and_the_rules_keep_and_drop_as_on_synthetic(slide):
    from .realslide import TILES_512

    cases = [((0.0, 0.0), 0.0, True), ((3.3, -2.2), 1.5, True), ((-2.0, 5.0), -1.0, True),
             ((-30.0, 20.0), 0.5, False), ((50.0, 38.0), -1.0, False), ((4.0, 2.0), 7.5, False)]
    alignments = []
    for (shift, rotation, _), origin, seed in zip(cases, TILES_512[::2], range(len(cases))):
        pair = misaligned_pair(slide, origin, SIZE, shift, rotation, seed)
        a = _align(pair.he, pair.ihc)
        assert math.hypot(a.shift_x - shift[0], a.shift_y - shift[1]) <= 2.0, (origin, a)
        assert a.rotation == pytest.approx(rotation, abs=0.4)
        alignments.append(a)
    decisions = select(alignments, [SIZE] * len(cases), ["train"] * len(cases))
    assert [d.kept for d in decisions] == [k for *_, k in cases]


# --------------------------------------------------------------------------- selection


def _done(shift=0.0, rotation=0.0, score=0.8) -> Alignment:
    return Alignment("done", shift, 0.0, rotation, 0.9, 0.95, score)


def test_default_rules_scale_the_shift_limit_with_the_tile_and_name_every_broken_rule():
    items = [_done(20.0), _done(20.0), _done(33.0), _done(rotation=-5.5), _done(score=0.05),
             _done(40.0, 9.0, 0.01), Alignment("unscorable", reason="too little tissue")]
    sides = [1024, 512, 1024, 1024, 1024, 1024, 1024]
    decisions = select(items, sides, ["train"] * len(items))
    assert [d.kept for d in decisions] == [True, False, False, False, False, False, False]
    assert [d.rule for d in decisions] == ["", "shift", "shift", "rotation", "score", "shift", "unscorable"]
    assert decisions[1].reason == "shift 20.0 px > 16.0 px"
    assert decisions[5].reason.count(";") == 2  # shift, rotation and score all broken
    assert decisions[6] == Decision(False, "unscorable", "unscorable: too little tissue")
    assert select([_done(20.0)], [512], ["x"], Selection(max_shift=25.0))[0].kept  # explicit px: not scaled


def test_rank_cuts_apply_per_split_and_drop_unscorable_pairs_first():
    scores = [0.9, 0.1, 0.5, 0.7, 0.3]
    items = [_done(score=s) for s in scores] + [Alignment("unscorable", reason="blank")]
    groups = ["train"] * 5 + ["train"]
    kept = [d.kept for d in select(items, [1024] * 6, groups, Selection(keep=3))]
    assert kept == [True, False, True, True, False, False]  # 0.9, 0.7, 0.5
    dropped = select(items, [1024] * 6, groups, Selection(drop_fraction=0.25))  # ceil(1.5) = 2: blank + 0.1
    assert [d.kept for d in dropped] == [True, False, True, True, True, False]
    assert dropped[1].rule == "rank" and "ranks 5 of 6 in train" in dropped[1].reason
    two = select([_done(score=0.2), _done(score=0.4)], [1024] * 2, ["train", "val"], Selection(keep=1))
    assert [d.kept for d in two] == [True, True]
    with pytest.raises(ValueError, match="either keep"):
        Selection(keep=3, drop_fraction=0.1)


# --------------------------------------------------------------------------- registration


def test_registration_undoes_a_known_shift_of_images_and_points():
    pair = render_pair(SYNTH, 9, shift=(0, 0), rotation=0)
    mask = pair.truth["positive_mask_he"].astype(np.uint8)
    for shift in ((7, -4), (-3.5, 2.25)):
        moved = register_image(mask, (-shift[0], -shift[1]))  # content at p + shift: the IHC frame
        back = register_image(moved, shift)
        inner = (slice(12, -12), slice(12, -12))
        assert back.dtype == np.uint8 and set(np.unique(back)) <= {0, 1}
        error = np.mean(back[inner] != mask[inner])
        assert error == 0.0 if shift == (7, -4) else error < 0.01  # integer shifts are exact
        assert np.mean(moved[inner] != mask[inner]) > 5 * error + 0.01
    dab = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    np.testing.assert_array_equal(register_image(dab, (2, 3))[:-3, :-2], dab[3:, 2:])
    assert register_image(dab, (2, 3))[-1].max() == 0  # outside the source: 0
    np.testing.assert_allclose(register_points(np.float32([[10, 20]]), (2.5, -1.0)), [[7.5, 21.0]])
