"""Detection scores: instance F1 at an IoU threshold, count error, centroid F1 (hand-computed cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atst_prep.nuclei.metrics import DetectionScore, centroid_f1, count_error, instance_f1


def _squares(shape, boxes) -> np.ndarray:
    """Label image with label k on box k-1 = (row0, row1, col0, col1)."""
    labels = np.zeros(shape, np.int32)
    for k, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        labels[r0:r1, c0:c1] = k
    return labels


def test_overlapping_squares_match_with_their_known_iou():
    true = _squares((30, 30), [(0, 10, 0, 10)])
    pred = _squares((30, 30), [(0, 10, 2, 12)])  # 80 px shared, 120 px in the union: IoU 2/3
    score = instance_f1(pred, true, iou_threshold=0.5)
    assert (score.tp, score.fp, score.fn) == (1, 0, 0)
    assert score.f1 == 1.0
    assert score.mean_matched_iou == pytest.approx(2 / 3)
    below = instance_f1(pred, true, iou_threshold=0.7)
    assert (below.tp, below.fp, below.fn, below.f1) == (0, 1, 1, 0.0)
    assert math.isnan(below.mean_matched_iou)


def test_extra_prediction_is_a_false_positive_and_missed_object_a_false_negative():
    true = _squares((40, 40), [(0, 10, 0, 10), (20, 30, 20, 30)])
    pred = _squares((40, 40), [(0, 10, 0, 10), (0, 5, 30, 35)])  # second true missed, second pred extra
    score = instance_f1(pred, true)
    assert score == DetectionScore(tp=1, fp=1, fn=1, precision=0.5, recall=0.5, f1=0.5,
                                   mean_matched_iou=1.0, n_true=2, n_pred=2)


def test_label_values_need_not_be_consecutive():
    true = _squares((40, 40), [(0, 10, 0, 10), (20, 30, 20, 30)]) * 7
    pred = _squares((40, 40), [(0, 10, 0, 10), (20, 30, 20, 30)]) + 40
    pred[pred == 40] = 0
    score = instance_f1(pred, true)
    assert (score.tp, score.fp, score.fn, score.n_true, score.n_pred) == (2, 0, 0, 2, 2)


def test_matching_is_optimal_not_greedy():
    # 1-px-row strips (IoU as for intervals): true A = cols 0-9, B = cols 10-19;
    # pred X = cols 4-14 (IoU 0.4 with A, 0.3125 with B), Y = cols 0-2 (IoU 0.3 with A).
    # Greedy on IoU takes X-A and leaves Y and B unmatched; the optimum is X-B and Y-A.
    true = _squares((3, 20), [(0, 3, 0, 10), (0, 3, 10, 20)])
    pred = _squares((3, 20), [(0, 3, 4, 15), (0, 3, 0, 3)])
    score = instance_f1(pred, true, iou_threshold=0.3)
    assert (score.tp, score.fp, score.fn) == (2, 0, 0)
    assert score.mean_matched_iou == pytest.approx((0.3 + 0.3125) / 2)


def test_empty_inputs_score_as_vacuously_perfect_or_all_missed():
    empty = np.zeros((16, 16), np.int32)
    both = instance_f1(empty, empty)
    assert (both.tp, both.fp, both.fn, both.precision, both.recall, both.f1) == (0, 0, 0, 1.0, 1.0, 1.0)
    assert math.isnan(both.mean_matched_iou)
    one = _squares((16, 16), [(2, 6, 2, 6)])
    missed = instance_f1(empty, one)
    assert (missed.fn, missed.precision, missed.recall, missed.f1) == (1, 1.0, 0.0, 0.0)
    invented = instance_f1(one, empty)
    assert (invented.fp, invented.precision, invented.recall, invented.f1) == (1, 0.0, 1.0, 0.0)


def test_instance_f1_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        instance_f1(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="integer label image"):
        instance_f1(np.zeros((4, 4), np.float32), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="non-negative"):
        instance_f1(-np.ones((4, 4), np.int32), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="iou_threshold"):
        instance_f1(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32), iou_threshold=0.0)


def test_instance_f1_agrees_with_stardist_matching():
    matching = pytest.importorskip("stardist.matching").matching
    rng = np.random.default_rng(3)
    for _ in range(5):
        true = _squares((64, 64), [tuple(np.sort(rng.integers(0, 64, 2))) + tuple(np.sort(rng.integers(0, 64, 2)))
                                   for _ in range(12)])
        pred = np.roll(true, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        pred[rng.random(pred.shape) < 0.05] = 0
        for thr in (0.3, 0.5, 0.7):
            ours, ref = instance_f1(pred, true, thr), matching(true, pred, thresh=thr)
            assert (ours.tp, ours.fp, ours.fn) == (ref.tp, ref.fp, ref.fn)
            if ours.tp:
                assert ours.mean_matched_iou == pytest.approx(ref.mean_matched_score)


def test_count_error_is_relative_to_the_true_count_with_a_floor_of_one():
    assert count_error(12, 10) == pytest.approx(0.2)
    assert count_error(8, 10) == pytest.approx(0.2)
    assert count_error(3, 0) == 3.0
    assert count_error(0, 0) == 0.0
    with pytest.raises(ValueError):
        count_error(-1, 3)


def test_centroid_f1_matches_within_the_distance_one_to_one():
    true = np.array([[1.0, 0.0], [10.0, 3.0], [100.0, 100.0]])
    pred = np.array([[0.0, 0.0], [10.0, 0.0], [50.0, 50.0], [1.0, 0.0]])  # two predictions compete for one truth
    score = centroid_f1(pred, true, max_distance=2.0)
    assert (score.tp, score.fp, score.fn, score.n_true, score.n_pred) == (1, 3, 2, 3, 4)
    assert score.precision == pytest.approx(0.25) and score.recall == pytest.approx(1 / 3)
    assert math.isnan(score.mean_matched_iou)
    assert centroid_f1(true, true, max_distance=0.5).f1 == 1.0  # coincident points (distance 0) match


def test_centroid_f1_is_optimal_and_includes_the_distance_limit():
    # greedy nearest-first pairs P1-T1 (1.2) and leaves P2 alone; the optimum is P1-T2 (1.8), P2-T1 (1.5)
    true = np.array([[0.0, 0.0], [3.0, 0.0]])
    pred = np.array([[1.2, 0.0], [-1.5, 0.0]])
    assert centroid_f1(pred, true, max_distance=2.0).tp == 2
    assert centroid_f1(np.array([[2.0, 0.0]]), np.array([[0.0, 0.0]]), max_distance=2.0).tp == 1


def test_centroid_f1_with_empty_inputs():
    none = np.zeros((0, 2))
    assert centroid_f1(none, none, 3.0).f1 == 1.0
    missed = centroid_f1(none, np.array([[1.0, 1.0]]), 3.0)
    assert (missed.fn, missed.recall, missed.f1) == (1, 0.0, 0.0)
    with pytest.raises(ValueError, match="max_distance"):
        centroid_f1(none, none, 0.0)


def test_table_and_sort_paths_give_what_np_unique_gives():
    from atst_prep.nuclei.metrics import _distinct_counts, _sequential

    rng = np.random.default_rng(5)
    small = rng.integers(0, 50, 1000)           # a look-up table
    huge = rng.integers(0, 50, 1000) * 10**7    # ids far beyond the pixel count: a sort
    for flat in (small, huge, np.zeros(0, np.int64)):
        ids, seq = _sequential(flat)
        ref_ids, ref_seq = np.unique(flat, return_inverse=True)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(seq, ref_seq.ravel())
    for top in (50, 10**9):
        values, counts = _distinct_counts(small, top)
        ref_values, ref_counts = np.unique(small, return_counts=True)
        np.testing.assert_array_equal(values, ref_values)
        np.testing.assert_array_equal(counts, ref_counts)


def test_huge_label_values_score_as_their_sequential_relabelling():
    true = _squares((40, 40), [(0, 10, 0, 10), (20, 30, 20, 30), (0, 8, 30, 38)])
    pred = np.roll(true, (1, 2), axis=(0, 1))
    pred[pred == 3] = 0
    small = instance_f1(pred, true, 0.5)
    big = instance_f1(np.where(pred > 0, pred * 10**9 + 7, 0), np.where(true > 0, true * 10**8, 0), 0.5)
    assert big == small and (small.tp, small.fp, small.fn) == (2, 0, 1)
