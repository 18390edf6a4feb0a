"""Instance matching: ``atst_prep.nuclei.metrics.instance_f1`` vs ``stardist.matching.matching`` (issue 14).

Run: ``python benchmarks/matching.py [--quick]`` (one thread, about a minute; ``--quick`` leaves out the
2048 px mosaic).

Both match instance label images one-to-one at IoU >= a threshold, most
pairs first and the largest IoU sum as the tie-break, with
``scipy.optimize.linear_sum_assignment``. Compared on:

- ``squares``: the random-box label images of ``tests/test_nuclei_metrics.py``
  (64 px, 12 boxes, the truth rolled by up to 3 px with 5 % of pixels
  dropped), 20 pairs;
- ``synth N px``: the synthetic IHC tiles the nucleus tests use
  (:func:`atst_prep.synth.render_pair`, truth ``nucleus_labels_ihc``) against
  the classical counter's labels (:func:`atst_prep.nuclei.classical.detect_nuclei`,
  membranous and nuclear patterns), 256, 512 and 1024 px;
- ``mosaic 2048 px``: four 1024 px tiles side by side (about 5 600 nuclei):
  how each scales to bigger label images;
- ``empty``: an empty prediction against an empty truth, and against one nucleus.

Printed per case: whether TP/FP/FN agree at IoU 0.3, 0.5 and 0.7 on every
pair, the range of ours minus stardist's mean matched IoU (stardist's IoUs
are float32: differences of ~1e-8; and its tie-break also counts the IoU of
assigned pairs below the threshold, so at a low threshold it can keep a
matching with a smaller matched-IoU sum), the median ms per call
at IoU 0.5 (the two take turns on each pair), and the dense matrices stardist
allocates (``n_true x n_pred`` overlap, IoU and cost). stardist's first call
in a process also compiles its numba kernel; that is timed apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atst_prep.nuclei.classical import ClassicalConfig, detect_nuclei  # noqa: E402
from atst_prep.nuclei.metrics import instance_f1  # noqa: E402
from atst_prep.stain import dab_and_hematoxylin  # noqa: E402
from atst_prep.synth import SynthConfig, render_pair  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7)
CHANNEL = {"membranous": "hema", "nuclear": "hema+dab"}


def squares(rng, shape=(64, 64), n=12) -> np.ndarray:
    """As ``tests/test_nuclei_metrics._squares`` on random boxes."""
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        r0, r1 = np.sort(rng.integers(0, shape[0], 2))
        c0, c1 = np.sort(rng.integers(0, shape[1], 2))
        labels[r0:r1, c0:c1] = k
    return labels


def square_pairs(n=20):
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        true = squares(rng)
        pred = np.roll(true, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        pred[rng.random(pred.shape) < 0.05] = 0
        out.append((pred, true))
    return out


def synth_pairs(size: int, seeds) -> list:
    out = []
    for pattern, channel in CHANNEL.items():
        for seed in seeds:
            pair = render_pair(SynthConfig(size=size, pattern=pattern), seed)
            dab, hema = dab_and_hematoxylin(pair.ihc)
            pred = detect_nuclei(hema, dab, ClassicalConfig(channel=channel)).labels.astype(np.int32)
            out.append((pred, pair.truth["nucleus_labels_ihc"].astype(np.int32)))
    return out


def mosaic(pairs) -> list:
    """One 2048 px pair from four 1024 px pairs (labels offset so they stay distinct)."""
    def tile(arrays):
        offset, parts = 0, []
        for a in arrays:
            parts.append(np.where(a > 0, a + offset, 0))
            offset += int(a.max()) + 1
        return np.block([[parts[0], parts[1]], [parts[2], parts[3]]])
    return [(tile([p for p, _ in pairs[:4]]), tile([t for _, t in pairs[:4]]))]


def compare(pairs):
    """(TP/FP/FN agree everywhere, (min, max) of ours - stardist mean IoU, ours ms, stardist ms, stardist dense MB)."""
    from stardist.matching import matching

    agree, diffs, t_ours, t_sd, dense = True, [], [], [], 0.0
    for pred, true in pairs:
        for thr in THRESHOLDS:
            t0 = time.perf_counter()
            ours = instance_f1(pred, true, thr)
            t1 = time.perf_counter()
            ref = matching(true, pred, thresh=thr)
            t2 = time.perf_counter()
            if thr == 0.5:
                t_ours.append(t1 - t0)
                t_sd.append(t2 - t1)
            agree &= (ours.tp, ours.fp, ours.fn) == (ref.tp, ref.fp, ref.fn)
            if ours.tp:
                diffs.append(ours.mean_matched_iou - ref.mean_matched_score)
        n_true, n_pred = len(np.unique(true)) - 1, len(np.unique(pred)) - 1
        # overlap uint64 (+1 row/col), IoU float32, cost float64
        dense = max(dense, ((n_true + 1) * (n_pred + 1) * 8 + n_true * n_pred * (4 + 8)) / 2**20)
    return agree, (min(diffs, default=0.0), max(diffs, default=0.0)), float(np.median(t_ours)) * 1e3, float(np.median(t_sd)) * 1e3, dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out the 2048 px mosaic")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    from stardist.matching import matching
    t_import = time.perf_counter() - t0
    warm = np.zeros((8, 8), np.int32)
    warm[2:5, 2:5] = 1
    t0 = time.perf_counter()
    matching(warm, warm)
    t_first = time.perf_counter() - t0

    cases = {"squares 64 px (20 pairs)": square_pairs()}
    for size, seeds in ((256, (1000, 1001, 1002)), (512, (1000, 1001, 1002)), (1024, (1000, 1001))):
        cases[f"synth {size} px ({2 * len(seeds)} pairs)"] = synth_pairs(size, seeds)
    if not args.quick:
        cases["mosaic 2048 px (1 pair)"] = mosaic(cases["synth 1024 px (4 pairs)"])

    print(f"stardist.matching: import {t_import:.2f} s, first call (numba compile) {t_first:.2f} s\n")
    print("| case | nuclei (true) | TP/FP/FN equal at 0.3/0.5/0.7 | mean IoU ours - stardist (min, max) | ours ms | stardist ms "
          "| stardist / ours | stardist dense MB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name, pairs in cases.items():
        nuclei = int(np.mean([len(np.unique(t)) - 1 for _, t in pairs]))
        agree, diff, ours, sd, dense = compare(pairs)
        print(f"| {name} | {nuclei} | {'yes' if agree else '**no**'} | {diff[0]:+.1e}, {diff[1]:+.1e} | {ours:.2f} | {sd:.2f} "
              f"| {sd / ours:.2f} | {dense:.1f} |")

    empty, one = np.zeros((16, 16), np.int32), np.zeros((16, 16), np.int32)
    one[2:6, 2:6] = 1
    print("\nempty inputs (precision, recall, F1, mean matched IoU):\n")
    print("| pred vs true | ours | stardist |")
    print("|---|---|---|")
    for label, pred, true in (("empty vs empty", empty, empty), ("empty vs one", empty, one),
                              ("one vs empty", one, empty)):
        o, r = instance_f1(pred, true), matching(true, pred)
        print(f"| {label} | {o.precision:g}, {o.recall:g}, {o.f1:g}, {o.mean_matched_iou:g} "
              f"| {r.precision:g}, {r.recall:g}, {r.f1:g}, {r.mean_matched_score:g} |")


if __name__ == "__main__":
    main()
