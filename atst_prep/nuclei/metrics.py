"""Scoring nucleus detections against ground truth.

Two ways to pair predictions with true nuclei, both one-to-one and optimal
(most pairs first, then the best total quality among those):

- :func:`instance_f1` pairs instance label images at IoU >= a threshold
  (the StarDist / CPP-Net convention; the same TP/FP/FN as
  ``stardist.matching.matching``, which a test checks).
- :func:`centroid_f1` pairs points within a distance (for counters that give
  centroids only, or truth that is only points).

Kept over ``stardist.matching.matching`` (issue 14, ``benchmarks/matching.py``,
2-core CPU): the same TP/FP/FN on every test and synthetic tile, but
stardist builds dense ``n_true x n_pred`` overlap, IoU and cost matrices and
solves one assignment over them (3.7x slower at 1024 px tiles, ~1 500
nuclei; 14x slower and 680 MB at 2048 px; 1.1-1.7x slower at 64-512 px;
plus a 1.4-1.8 s numba compile in each process), keeps its IoUs in float32,
breaks ties on the IoU of assigned pairs below the threshold too (so at IoU
0.3 its mean matched IoU can be 2e-4 below the optimum), and scores empty
inputs 0 where this module's convention (below) says 1. :func:`centroid_f1`
has no stardist counterpart: ``stardist.matching`` needs label images, and
truth here may be points.

Conventions for empty inputs: a ratio with a zero denominator is vacuously
perfect (precision is 1 when nothing was predicted, recall is 1 when there
was nothing to find), so an empty tile scored against an empty prediction
has F1 = 1 and averages over tiles are not dragged down by empty ones;
``mean_matched_iou`` is nan when nothing was matched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["DetectionScore", "instance_f1", "count_error", "centroid_f1"]


@dataclass(frozen=True)
class DetectionScore:
    """Detection counts and rates of one comparison.

    Attributes
    ----------
    tp, fp, fn : matched pairs, unmatched predictions, unmatched true objects.
    precision, recall, f1 : tp / n_pred, tp / n_true, 2 tp / (2 tp + fp + fn);
        1.0 where the denominator is 0 (module docstring).
    mean_matched_iou : mean IoU of the matched pairs; nan if none (and always
        nan for :func:`centroid_f1`).
    n_true, n_pred : number of true and predicted objects.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    mean_matched_iou: float
    n_true: int
    n_pred: int


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 1.0


def _score(tp: int, n_true: int, n_pred: int, mean_iou: float) -> DetectionScore:
    fp, fn = n_pred - tp, n_true - tp
    return DetectionScore(tp=tp, fp=fp, fn=fn, precision=_ratio(tp, n_pred), recall=_ratio(tp, n_true),
                          f1=_ratio(2 * tp, 2 * tp + fp + fn), mean_matched_iou=mean_iou,
                          n_true=n_true, n_pred=n_pred)


def _match(rows: np.ndarray, cols: np.ndarray, gain: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Optimal one-to-one matching on candidate pairs; returns the chosen candidate indices.

    ``rows``, ``cols`` (K,) int index candidate pairs (each pair at most once),
    ``gain`` (K,) in [0, 1] their quality. Most pairs first, then the largest
    total gain. The candidate graph is split into connected components, so
    the (cubic) assignment only runs on the few ambiguous clusters, not on an
    n_true x n_pred matrix.
    """
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols + n_rows)), shape=(n_rows + n_cols,) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[rows]
    sizes = np.bincount(edge_comp)
    chosen = [np.flatnonzero(sizes[edge_comp] == 1)]  # a lone pair is matched as is
    for c in np.flatnonzero(sizes > 1):
        idx = np.flatnonzero(edge_comp == c)
        r, r_inv = np.unique(rows[idx], return_inverse=True)
        k, k_inv = np.unique(cols[idx], return_inverse=True)
        # a match is worth 1; the gain tie-break sums to < 1, so it never trades a match away
        cost = np.zeros((len(r), len(k)))
        cost[r_inv, k_inv] = -1.0 - gain[idx] / (2.0 * min(len(r), len(k)))
        lut = np.full((len(r), len(k)), -1, np.int64)
        lut[r_inv, k_inv] = idx
        ri, ki = linear_sum_assignment(cost)
        picked = lut[ri, ki]
        chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))


def _check_labels(name: str, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"{name} must be an (H, W) integer label image, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} must be non-negative (0 = background)")
    return labels.astype(np.int64, copy=False)


def _table_fits(top: int, n: int) -> bool:
    """Whether a look-up table of ``top`` entries costs no more than sorting ``n`` values (else sort)."""
    return top <= 4 * n + 65536


def _sequential(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(flat, return_inverse=True)`` for non-negative ints: sorted distinct values, each one's index.

    A bincount look-up table instead of a sort where the values are small
    (label images: about 5x faster at 256-1024 px); the same arrays either way.
    """
    top = int(flat.max()) + 1 if flat.size else 0
    if not (flat.size and _table_fits(top, flat.size)):
        ids, seq = np.unique(flat, return_inverse=True)
        return ids, seq.ravel()
    present = np.bincount(flat, minlength=top) > 0
    return np.flatnonzero(present), (np.cumsum(present) - 1)[flat]


def _distinct_counts(values: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_counts=True)`` for ints in ``[0, top)``, by a bincount where the table is small."""
    if not _table_fits(top, values.size):
        return np.unique(values, return_counts=True)
    counts = np.bincount(values, minlength=top)
    distinct = np.flatnonzero(counts)
    return distinct, counts[distinct]


def instance_f1(pred_labels: np.ndarray, true_labels: np.ndarray, iou_threshold: float = 0.5) -> DetectionScore:
    """Instance detection score: one-to-one matching of label regions at IoU >= ``iou_threshold``.

    Parameters
    ----------
    pred_labels, true_labels : (H, W) int arrays, 0 = background, any other
        value one object (labels need not be consecutive).
    iou_threshold : pairs with IoU >= this may match; in (0, 1].

    Returns
    -------
    DetectionScore
    """
    pred, true = _check_labels("pred_labels", pred_labels), _check_labels("true_labels", true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels {pred.shape} and true_labels {true.shape} differ in shape")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
    t_ids, t_seq = _sequential(true.ravel())  # sequential ids, background 0 if present
    p_ids, p_seq = _sequential(pred.ravel())
    t_off, p_off = int(t_ids.size > 0 and t_ids[0] == 0), int(p_ids.size > 0 and p_ids[0] == 0)
    t_seq, p_seq = t_seq - t_off, p_seq - p_off  # -1 = background
    n_true, n_pred = len(t_ids) - t_off, len(p_ids) - p_off
    t_area = np.bincount(t_seq[t_seq >= 0], minlength=n_true)
    p_area = np.bincount(p_seq[p_seq >= 0], minlength=n_pred)
    both = (t_seq >= 0) & (p_seq >= 0)
    pair, inter = _distinct_counts(t_seq[both] * max(n_pred, 1) + p_seq[both], n_true * max(n_pred, 1))
    rows, cols = pair // max(n_pred, 1), pair % max(n_pred, 1)
    iou = inter / (t_area[rows] + p_area[cols] - inter)
    ok = iou >= iou_threshold
    rows, cols, iou = rows[ok], cols[ok], iou[ok]
    picked = _match(rows, cols, iou, n_true, n_pred)
    mean_iou = float(iou[picked].mean()) if len(picked) else float("nan")
    return _score(len(picked), n_true, n_pred, mean_iou)


def count_error(pred_count: float, true_count: float) -> float:
    """Relative count error ``|pred - true| / max(true, 1)`` (so an empty truth gives the absolute error)."""
    if pred_count < 0 or true_count < 0:
        raise ValueError(f"counts must be non-negative, got pred {pred_count!r}, true {true_count!r}")
    return abs(float(pred_count) - float(true_count)) / max(float(true_count), 1.0)


def centroid_f1(pred_xy: np.ndarray, true_xy: np.ndarray, max_distance: float) -> DetectionScore:
    """Point detection score: one-to-one matching of centroids at distance <= ``max_distance``.

    Parameters
    ----------
    pred_xy, true_xy : (N, 2) and (M, 2) float, (x, y) px.
    max_distance : px, > 0. Among matchings with the most pairs, the one with
        the smallest total distance is chosen.

    Returns
    -------
    DetectionScore with ``mean_matched_iou`` nan.
    """
    pred = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    true = np.asarray(true_xy, np.float64).reshape(-1, 2)
    if not max_distance > 0:
        raise ValueError(f"max_distance must be > 0 px, got {max_distance!r}")
    if len(pred) and len(true):
        # ndarray output keeps coincident points (distance 0) as pairs
        pairs = cKDTree(true).sparse_distance_matrix(cKDTree(pred), max_distance, output_type="ndarray")
        rows, cols, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
        picked = _match(rows, cols, 1.0 - d / max_distance, len(true), len(pred))
        tp = len(picked)
    else:
        tp = 0
    return _score(tp, len(true), len(pred), float("nan"))
