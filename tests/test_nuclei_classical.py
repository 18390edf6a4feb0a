"""The classical nucleus counter: accuracy on held-out synthetic tiles, the real IHC sample, contracts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from atst_prep.nuclei import Nuclei, counter_names, make_counter
from atst_prep.nuclei.classical import ClassicalConfig, ClassicalCounter, _otsu, detect_nuclei
from atst_prep.nuclei.metrics import count_error, instance_f1
from atst_prep.stain import dab_and_hematoxylin
from atst_prep.synth import SynthConfig, render_pair

#: Seeds never used while choosing the parameters (tuning used seeds 0-5).
HELD_OUT = (1000, 1001, 1002)
#: The channel each DAB pattern needs (module docstring).
CHANNEL = {"membranous": "hema", "nuclear": "hema+dab"}


@pytest.fixture(scope="module")
def synth_tiles() -> dict:
    """Held-out 512 px IHC tiles per pattern: (hema, dab, truth labels, positive flag per label)."""
    tiles = {}
    for pattern in CHANNEL:
        for seed in HELD_OUT:
            pair = render_pair(SynthConfig(size=512, pattern=pattern), seed)
            dab, hema = dab_and_hematoxylin(pair.ihc)
            tiles[pattern, seed] = (hema, dab, pair.truth["nucleus_labels_ihc"].astype(np.int32),
                                    pair.truth["nucleus_positive_ihc"])
    return tiles


@pytest.fixture(scope="module")
def real_densities(real_ihc):
    dab, hema = dab_and_hematoxylin(real_ihc)
    return hema, dab


def _true_count(labels: np.ndarray) -> int:
    # cut nuclei centred outside the tile are labelled too, so count labels, not truth centroids
    ids = np.unique(labels)
    return int(np.count_nonzero(ids))


@pytest.mark.parametrize("pattern", sorted(CHANNEL))
def test_held_out_synthetic_tiles_reach_f1_and_count_targets(synth_tiles, pattern):
    # Measured with these defaults on seeds 1000-1007 (512 px): membranous F1 0.848, count
    # error 6.5 %; nuclear (hema+dab) F1 0.858, count error 5.4 %. Targets: F1 >= 0.8, error <= 10 %.
    config = ClassicalConfig(channel=CHANNEL[pattern])
    f1s, errors = [], []
    for seed in HELD_OUT:
        hema, dab, truth, _ = synth_tiles[pattern, seed]
        nuclei = detect_nuclei(hema, dab, config)
        score = instance_f1(nuclei.labels, truth, iou_threshold=0.5)
        f1s.append(score.f1)
        errors.append(count_error(len(nuclei), _true_count(truth)))
        assert score.f1 >= 0.75, (seed, score)
    assert np.mean(f1s) >= 0.8, f1s
    assert np.mean(errors) <= 0.10, errors


def test_hematoxylin_alone_misses_dab_positive_nuclei_of_nuclear_markers(synth_tiles):
    # Why channel="hema+dab" exists: a DAB-positive nucleus keeps ~40 % of its counterstain.
    recall = {}
    for channel in ("hema", "hema+dab"):
        found = total = 0
        for seed in HELD_OUT:
            hema, dab, truth, positive = synth_tiles["nuclear", seed]
            labels = detect_nuclei(hema, dab, ClassicalConfig(channel=channel)).labels
            pos_ids = np.flatnonzero(positive) + 1
            pos_ids = pos_ids[np.isin(pos_ids, truth)]
            for k in pos_ids:  # a positive nucleus is found when one detection covers most of it
                inside = labels[truth == k]
                best = np.bincount(inside[inside > 0]).max() if np.any(inside > 0) else 0
                found += best >= 0.5 * inside.size
            total += len(pos_ids)
        recall[channel] = found / total
    assert recall["hema"] < 0.3 and recall["hema+dab"] > 0.8, recall


def test_hema_plus_dab_is_wrong_for_membranous_markers(synth_tiles):
    # Why the default channel is "hema": stained membranes would become nuclei.
    hema, dab, truth, _ = synth_tiles["membranous", HELD_OUT[0]]
    f1 = {c: instance_f1(detect_nuclei(hema, dab, ClassicalConfig(channel=c)).labels, truth).f1
          for c in ("hema", "hema+dab")}
    assert f1["hema+dab"] < f1["hema"] - 0.1, f1


def test_real_ihc_count_is_pinned(real_densities):
    # The overlay of all 648 detections was inspected by eye: stromal nuclei are found one
    # each; elongated epithelial nuclei in the glands are often cut in two and the palest
    # ones (hematoxylin ~0.02-0.03 OD under strong DAB) missed, so the total is a regression
    # pin, not a true count (the stroma test below is the verified one): +-15 % passes
    # library noise and small parameter changes and fails a change of method.
    hema, dab = real_densities
    assert 551 <= len(detect_nuclei(hema, dab)) <= 745


def test_real_ihc_stroma_counts_agree_with_an_eye_count(real_densities):
    # Two 100 x 100 px stroma crops, counted by eye on a 4x enlargement: 16 and 18 nuclei
    # (+-2 faint ones). The detector finds 16 and 21 there. +-20 % of 34 allows for the
    # uncertain faint nuclei and the occasional split elongated one.
    hema, dab = real_densities
    xy = detect_nuclei(hema, dab).centroids
    counted = 0
    for row, col in ((320, 160), (400, 150)):
        inside = (xy[:, 0] >= col) & (xy[:, 0] < col + 100) & (xy[:, 1] >= row) & (xy[:, 1] < row + 100)
        counted += int(inside.sum())
    assert 27 <= counted <= 41


@pytest.mark.parametrize("channel", ["hema", "hema+dab"])
def test_tiles_without_nuclei_give_no_detections(channel):
    rng = np.random.default_rng(0)
    blank = np.zeros((256, 256), np.float32)
    # stroma-like counterstain and a DAB membrane mesh: Otsu alone would split this noise
    stroma = (0.015 + 0.004 * rng.standard_normal((256, 256))).clip(0).astype(np.float32)
    membranes = np.zeros((256, 256), np.float32)
    membranes[::24, :] = membranes[:, ::24] = 0.15
    for hema, dab in ((blank, blank), (stroma, blank), (stroma, membranes * (channel == "hema"))):
        nuclei = detect_nuclei(hema, dab, ClassicalConfig(channel=channel))
        assert len(nuclei) == 0
        assert nuclei.labels.shape == (256, 256) and nuclei.labels.dtype == np.int32 and not nuclei.labels.any()
        assert nuclei.centroids.shape == (0, 2) and nuclei.areas.shape == (0,)


def test_labels_centroids_and_areas_are_consistent(synth_tiles):
    from scipy import ndimage as ndi

    hema, dab, _, _ = synth_tiles["nuclear", HELD_OUT[1]]
    nuclei = detect_nuclei(hema, dab, ClassicalConfig(channel="hema+dab"))
    n = len(nuclei)
    assert n > 100
    assert nuclei.labels.dtype == np.int32 and nuclei.centroids.dtype == np.float32 and nuclei.areas.dtype == np.int32
    assert np.array_equal(np.unique(nuclei.labels), np.arange(n + 1))  # labels 1..N, row k-1 for label k
    ids = np.arange(1, n + 1)
    assert np.array_equal(nuclei.areas, ndi.sum_labels(np.ones_like(nuclei.labels), nuclei.labels, ids))
    rc = np.array(ndi.center_of_mass(np.ones_like(nuclei.labels), nuclei.labels, ids))  # (row, col)
    assert np.abs(nuclei.centroids - rc[:, ::-1]).max() < 0.5
    assert nuclei.areas.min() >= ClassicalConfig().min_area


def test_detection_is_deterministic_and_accepts_other_real_dtypes(synth_tiles):
    hema, dab, _, _ = synth_tiles["membranous", HELD_OUT[2]]
    a, b = detect_nuclei(hema, dab), detect_nuclei(hema.astype(np.float64), dab)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)


def test_otsu_matches_scikit_image():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(1)
    for values in (rng.normal(0.02, 0.005, 5000), np.concatenate([rng.normal(0.02, 0.004, 4000),
                                                                  rng.normal(0.07, 0.01, 1000)])):
        assert _otsu(values) == pytest.approx(threshold_otsu(values, nbins=256))


@pytest.mark.parametrize("field, value", [
    ("channel", "dab"), ("threshold", "mean"), ("sigma", 0.0), ("sigma", "1"), ("min_density", -0.1),
    ("tissue_density", 0.05), ("edge_cut", -1.0), ("seed_sigma", float("nan")), ("min_distance", 0),
    ("min_distance", 2.5), ("min_area", True), ("split_area", 0), ("dab_weight", -1.0),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ClassicalConfig(**{field: value})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ClassicalConfig().sigma = 2.0


def test_bad_densities_are_rejected_with_a_reason():
    hema = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match="dab is None"):
        detect_nuclei(hema, None, ClassicalConfig(channel="hema+dab"))
    with pytest.raises(ValueError, match="dab has shape"):
        detect_nuclei(hema, np.zeros((32, 31), np.float32), ClassicalConfig(channel="hema+dab"))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        detect_nuclei(np.zeros((32, 32, 3), np.float32))
    bad = hema.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detect_nuclei(bad)
    assert len(detect_nuclei(hema)) == 0  # without DAB, "hema" needs none


def test_make_counter_builds_the_classical_counter(synth_tiles):
    assert "classical" in counter_names()
    counter = make_counter("classical", channel="hema+dab", min_area=10)
    assert isinstance(counter, ClassicalCounter)
    assert (counter.name, counter.version) == ("classical", "1")
    params = counter.params()
    assert params["channel"] == "hema+dab" and params["min_area"] == 10
    assert set(params) == {f.name for f in dataclasses.fields(ClassicalConfig)}
    hema, dab, _, _ = synth_tiles["nuclear", HELD_OUT[0]]
    nuclei = counter.detect(hema, dab)
    assert isinstance(nuclei, Nuclei) and nuclei.labels is not None
    assert np.array_equal(nuclei.centroids, detect_nuclei(hema, dab, counter.config).centroids)


def test_make_counter_errors_name_what_is_valid():
    with pytest.raises(ValueError, match="classical"):
        make_counter("nope")
    with pytest.raises(ValueError, match="unknown classical counter parameter.*sigmaa.*sigma"):
        make_counter("classical", sigmaa=1.0)
    with pytest.raises(ValueError, match="no weights"):
        make_counter("classical", weights="model.pt")
