"""Tests of the synthetic H&E / IHC pair generator (atst_prep.synth)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.color import rgb2hed
from skimage.registration import phase_cross_correlation
from skimage.transform import EuclideanTransform, warp

from atst_prep.synth import SynthConfig, load_truth, pair_seed, render_pair, transform_points, write_dataset

SMALL = SynthConfig(size=256)
POSITIVE = SynthConfig(size=256, negative_pair_rate=0.0, positive_fraction=(0.3, 0.5))
NEGATIVE = SynthConfig(size=256, negative_pair_rate=1.0)
# DAB leaking into rgb2hed's DAB channel in a pair without any DAB: JPEG 4:2:0
# chroma subsampling at nucleus edges (~0.015 at the 99.9th percentile) plus
# stain-vector jitter (~0.01); the counterstain itself peaks near 0.1, and
# real DAB in positive pairs reaches 0.05-0.1.
DAB_LEAK = 0.035


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _dab(rgb: np.ndarray) -> np.ndarray:
    return rgb2hed(rgb)[..., 2]


def test_same_seed_gives_identical_pair():
    a, b = render_pair(SMALL, 7), render_pair(SMALL, 7)
    np.testing.assert_array_equal(a.he, b.he)
    np.testing.assert_array_equal(a.ihc, b.ihc)
    assert a.he_jpeg == b.he_jpeg and a.ihc_jpeg == b.ihc_jpeg
    assert a.truth.keys() == b.truth.keys()
    for key in a.truth:
        np.testing.assert_array_equal(np.asarray(a.truth[key]), np.asarray(b.truth[key]), err_msg=key)


def test_different_seeds_give_different_pairs():
    a, b = render_pair(SMALL, 1), render_pair(SMALL, 2)
    assert not np.array_equal(a.he, b.he)
    assert not np.array_equal(a.ihc, b.ihc)
    assert a.truth["shift"] != b.truth["shift"]


def test_pair_has_documented_shapes_dtypes_and_units():
    pair = render_pair(POSITIVE, 3)
    t = pair.truth
    for img in (pair.he, pair.ihc):
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    for key in ("positive_mask_ihc", "positive_mask_he"):
        assert t[key].shape == (256, 256) and t[key].dtype == bool
    for key in ("positive_centroids_ihc", "positive_centroids_he", "centroids_ihc", "centroids_he"):
        assert t[key].ndim == 2 and t[key].shape[1] == 2 and t[key].dtype == np.float32
        assert np.all((t[key] >= -0.5) & (t[key] < 255.5)), key
    assert len(t["centroids_he"]) > 50 and len(t["positive_centroids_he"]) > 5
    assert t["nucleus_match"].shape == (len(t["centroids_ihc"]),)
    for key in ("stain_vectors_he", "stain_vectors_ihc"):
        np.testing.assert_allclose(np.linalg.norm(t[key], axis=1), 1.0)
    assert abs(t["shift"][0]) <= 16 and abs(t["shift"][1]) <= 16 and abs(t["rotation"]) <= 2
    assert all(80 <= q <= 95 for q in t["jpeg_quality"])
    assert t["pattern"] == "membranous"
    # The arrays are exactly what the JPEG bytes decode to.
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(pair.he_jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, pair.he)


def test_he_looks_pink_with_purple_nuclei_and_ihc_has_brown_dab():
    pair = render_pair(POSITIVE, 4)
    tissue = pair.he.astype(int).sum(-1) < 600
    r, g, b = (pair.he[..., i][tissue].mean() for i in range(3))
    assert r > g and b > g  # eosin absorbs green: pink/purple
    hed = rgb2hed(pair.ihc)
    r, g, b = (pair.ihc[..., i][hed[..., 2] > 0.05].mean() for i in range(3))
    assert r > b + 20 and r > g + 20  # DAB is brown (mixed with some counterstain)
    r, g, b = (pair.ihc[..., i][(hed[..., 0] > 0.05) & (hed[..., 2] < 0.02)].mean() for i in range(3))
    assert b > r + 20  # hematoxylin counterstain is blue


@pytest.mark.parametrize("pattern", ["membranous", "nuclear"])
@pytest.mark.parametrize("seed", [0, 3, 5])
def test_negative_pair_has_no_dab(pattern, seed):
    pair = render_pair(SynthConfig(size=256, pattern=pattern, negative_pair_rate=1.0), seed)
    assert not pair.truth["positive_mask_ihc"].any() and len(pair.truth["positive_centroids_ihc"]) == 0
    assert np.percentile(_dab(pair.ihc), 99.9) < DAB_LEAK


@pytest.mark.parametrize("pattern", ["membranous", "nuclear"])
@pytest.mark.parametrize("seed", [0, 6])
def test_positive_pair_has_dab_inside_true_region_not_far_outside(pattern, seed):
    pair = render_pair(SynthConfig(size=256, pattern=pattern, negative_pair_rate=0.0, positive_fraction=(0.3, 0.5)), seed)
    mask = pair.truth["positive_mask_ihc"]
    # Membranes of positive cells straddling the region edge spill out by up to a cell radius.
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((31, 31), np.uint8)).astype(bool)
    stained = _dab(pair.ihc) > DAB_LEAK
    assert stained[mask].mean() > 0.1
    assert stained[mask].mean() > 20 * stained[far].mean()


def _positive_to_negative_nucleus_hematoxylin(cue: float) -> float:
    cfg = SynthConfig(size=256, he_cue=cue, negative_pair_rate=0.0, positive_fraction=(0.4, 0.6))
    ratios = []
    for seed in (0, 1):
        pair = render_pair(cfg, seed)
        t, hema = pair.truth, rgb2hed(pair.he)[..., 0]
        positive = {tuple(c) for c in t["positive_centroids_he"].tolist()}
        is_pos = np.array([tuple(c) in positive for c in t["centroids_he"].tolist()])
        ij = np.round(t["centroids_he"]).astype(int)
        at = hema[ij[:, 1], ij[:, 0]]
        ratios.append(at[is_pos].mean() / at[~is_pos].mean())
    return float(np.mean(ratios))


def test_he_cue_darkens_positive_nuclei_only_when_enabled():
    assert _positive_to_negative_nucleus_hematoxylin(0.3) > 1.12
    assert abs(_positive_to_negative_nucleus_hematoxylin(0.0) - 1.0) < 0.05


def test_ihc_mask_is_he_mask_under_documented_rigid_transform():
    cfg = SynthConfig(size=256, elastic_amplitude=0.0, negative_pair_rate=0.0, positive_fraction=(0.3, 0.5))
    pair = render_pair(cfg, 11, shift=(7.3, -4.2), rotation=1.8)
    t = pair.truth
    # skimage's rotation is clockwise on screen for positive angles (y down); ours is OpenCV's.
    c = np.array([127.5, 127.5])
    tform = EuclideanTransform(translation=-c) + EuclideanTransform(rotation=-np.deg2rad(1.8)) \
        + EuclideanTransform(translation=c + np.array([7.3, -4.2]))
    warped = warp(t["positive_mask_he"].astype(float), tform.inverse, order=0, cval=-1)
    valid = warped >= 0  # IHC pixels whose source lies inside the H&E tile
    assert valid.mean() > 0.9
    assert _iou(warped[valid] > 0.5, t["positive_mask_ihc"][valid]) > 0.97


def test_ihc_mask_is_he_mask_warped_by_full_transform_with_elastic():
    cfg = SynthConfig(size=256, elastic_amplitude=6.0, negative_pair_rate=0.0, positive_fraction=(0.3, 0.5))
    t = render_pair(cfg, 12).truth
    gy, gx = np.mgrid[0:256, 0:256]
    src = transform_points(t, np.stack([gx.ravel(), gy.ravel()], -1), inverse=True)
    ij = np.round(src).astype(int)
    valid = np.all((ij >= 0) & (ij < 256), axis=1)
    warped = np.zeros(len(ij), bool)
    warped[valid] = t["positive_mask_he"][ij[valid, 1], ij[valid, 0]]
    assert _iou(warped[valid], t["positive_mask_ihc"].ravel()[valid]) > 0.95


def test_transform_points_inverse_round_trips_and_elastic_is_bounded():
    t = render_pair(SynthConfig(size=256, elastic_amplitude=6.0), 13).truth
    pts = np.random.default_rng(0).uniform(0, 255, (500, 2))
    np.testing.assert_allclose(transform_points(t, transform_points(t, pts), inverse=True), pts, atol=1e-6)
    rigid = dict(t, elastic_coeffs=np.zeros_like(t["elastic_coeffs"]))
    elastic = np.linalg.norm(transform_points(t, pts) - transform_points(rigid, pts), axis=1)
    assert elastic.max() <= 6.0 + 1e-3 and elastic.max() > 3.0


def test_pure_shift_moves_nuclei_centroids_by_exactly_the_shift():
    cfg = SynthConfig(size=256, elastic_amplitude=0.0, nucleus_jitter_rate=0.0, negative_pair_rate=0.0,
                      positive_fraction=(0.3, 0.5))
    pair = render_pair(cfg, 5, shift=(10, -6), rotation=0.0)
    t = pair.truth
    matched = t["nucleus_match"] >= 0
    assert matched.mean() > 0.7  # the rest: new in the IHC section or shifted in from outside the tile
    np.testing.assert_allclose(t["centroids_ihc"][matched] - t["centroids_he"][t["nucleus_match"][matched]],
                               np.tile([10.0, -6.0], (int(matched.sum()), 1)), atol=1e-4)
    # The pixels agree: the region moves by exactly (10, -6) ...
    np.testing.assert_array_equal(t["positive_mask_ihc"][:-6, 10:], t["positive_mask_he"][6:, :-10])
    # ... and so does the hematoxylin pattern of the nuclei (row, col order).
    found, _, _ = phase_cross_correlation(rgb2hed(pair.ihc)[..., 0], rgb2hed(pair.he)[..., 0])
    np.testing.assert_allclose(found, [-6, 10], atol=0.5)


def test_centroids_sit_on_nuclei_in_both_frames():
    pair = render_pair(POSITIVE, 8)
    for img, key in ((pair.he, "centroids_he"), (pair.ihc, "centroids_ihc")):
        hema = rgb2hed(img)[..., 0]
        ij = np.round(pair.truth[key]).astype(int)
        at_nuclei = hema[ij[:, 1], ij[:, 0]]
        assert np.mean(at_nuclei > np.median(hema)) > 0.9, key


def test_shift_override_within_maxima_keeps_the_tissue():
    a, b = render_pair(SMALL, 9), render_pair(SMALL, 9, shift=(3.0, 4.0), rotation=-1.0)
    np.testing.assert_array_equal(a.he, b.he)
    assert b.truth["shift"] == (3.0, 4.0) and b.truth["rotation"] == -1.0
    assert not np.array_equal(a.ihc, b.ihc)


def test_write_dataset_writes_mist_layout_and_truth_round_trips(tmp_path):
    cfg = SynthConfig(size=128, negative_pair_rate=0.0)
    calls = []
    root = write_dataset(tmp_path, n_train=2, n_val=1, config=cfg, marker="HER2", seed=4, progress=calls.append)
    assert root == tmp_path / "MIST" / "HER2"
    assert calls == [1, 2, 3]
    base = root / "TrainValAB"
    names = {split: sorted(p.name for p in (base / f"{split}A").iterdir()) for split in ("train", "val")}
    assert names == {"train": ["synth_00000.jpg", "synth_00001.jpg"], "val": ["synth_00002.jpg"]}
    for split in ("train", "val"):
        assert sorted(p.name for p in (base / f"{split}B").iterdir()) == names[split]
    truth = load_truth(root / "truth_train.npz")
    assert sorted(truth) == ["synth_00000", "synth_00001"]
    # Any pair can be regenerated alone from its derived seed.
    pair = render_pair(cfg, pair_seed(4, "train", 1))
    assert (base / "trainA" / "synth_00001.jpg").read_bytes() == pair.he_jpeg
    assert (base / "trainB" / "synth_00001.jpg").read_bytes() == pair.ihc_jpeg
    loaded = truth["synth_00001"]
    assert loaded.keys() == pair.truth.keys()
    for key, value in pair.truth.items():
        if isinstance(value, (str, tuple, float, int)):
            assert loaded[key] == value and type(loaded[key]) is type(value), key
        else:
            np.testing.assert_array_equal(loaded[key], value, err_msg=key)
            assert loaded[key].dtype == value.dtype, key
    assert list(load_truth(root / "truth_val.npz")) == ["synth_00002"]


def test_write_dataset_is_byte_identical_for_same_arguments(tmp_path):
    cfg = SynthConfig(size=96)
    roots = [write_dataset(tmp_path / d, n_train=1, n_val=1, config=cfg, marker="ER", seed=2) for d in ("a", "b")]
    files = [sorted(p.relative_to(r) for p in r.rglob("*") if p.is_file()) for r in roots]
    assert files[0] == files[1] and len(files[0]) == 6
    for rel in files[0]:
        assert (roots[0] / rel).read_bytes() == (roots[1] / rel).read_bytes(), rel


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"size": 32}, "size"),
        ({"size": 256.0}, "size"),
        ({"size": True}, "size"),
        ({"pattern": "cytoplasmic"}, "pattern"),
        ({"max_shift": -1.0}, "max_shift"),
        ({"max_shift": float("nan")}, "max_shift"),
        ({"max_rotation": 90.0}, "max_rotation"),
        ({"elastic_amplitude": 500.0}, "elastic_amplitude"),
        ({"nucleus_radius": (8.0, 4.0)}, "nucleus_radius"),
        ({"nucleus_radius": (4.0,)}, "nucleus_radius"),
        ({"positive_fraction": (0.2, 1.5)}, "positive_fraction"),
        ({"negative_pair_rate": 1.2}, "negative_pair_rate"),
        ({"he_cue": -0.1}, "he_cue"),
        ({"jpeg_quality": (80, 101)}, "jpeg_quality"),
        ({"jpeg_quality": (80.5, 90)}, "jpeg_quality"),
        ({"stain_jitter": 1.0}, "stain_jitter"),
        ({"scale": 0.0}, "scale"),
        ({"nucleus_drop_rate": -0.5}, "nucleus_drop_rate"),
    ],
)
def test_bad_config_values_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SynthConfig(**kwargs)


def test_config_normalises_lists_to_tuples_and_is_frozen():
    cfg = SynthConfig(nucleus_radius=[3, 5], jpeg_quality=[70, 90])
    assert cfg.nucleus_radius == (3.0, 5.0) and cfg.jpeg_quality == (70, 90)
    with pytest.raises(AttributeError):
        cfg.size = 512  # type: ignore[misc]


@pytest.mark.parametrize("call", [
    lambda: render_pair(SMALL, -1),
    lambda: render_pair(SMALL, 1.5),
    lambda: render_pair(SMALL, 0, shift=(1.0,)),
    lambda: render_pair(SMALL, 0, rotation=float("inf")),
    lambda: pair_seed(0, "test", 0),
])
def test_bad_seed_split_or_override_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_write_dataset_rejects_bad_marker_and_counts(tmp_path):
    with pytest.raises(ValueError, match="marker"):
        write_dataset(tmp_path, n_train=1, n_val=0, marker="../x")
    with pytest.raises(ValueError, match="n_val"):
        write_dataset(tmp_path, n_train=1, n_val=-1)
    with pytest.raises(FileNotFoundError):
        load_truth(tmp_path / "missing.npz")
