"""Eq. 1: the public script's scikit-image pipeline vs ours, and whole-build throughput.

Run: ``make bench`` (or ``python benchmarks/prep_masks.py [--quick]``).

1. The same real IHC tile (scikit-image's IHC sample mirrored to 1024x1024)
   through the reference pipeline (tests/oracle.py) and through
   ``atst_prep.mask.dab_mask``, one process, OpenCV limited to one thread:
   ms per image, speed ratio and IoU, for r = 5 and r = 30.
2. ``build`` on synthetic 1024x1024 JPEG pairs (read, check, unmix, mask,
   write HDF5, checksum) with 1 and 2 workers: ms per pair per core, pairs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_prep.build import BuildConfig, build  # noqa: E402
from atst_prep.mask import MaskConfig, dab_mask  # noqa: E402
from atst_prep.sources import detect  # noqa: E402
from atst_prep.synth import SynthConfig, write_dataset  # noqa: E402
from tests.oracle import iou, reference_mask  # noqa: E402


def real_ihc_1024() -> np.ndarray:
    ihc = data.immunohistochemistry()
    top = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def mask_benchmark(repeats_ref: int, repeats_ours: int) -> list[dict]:
    cv2.setNumThreads(1)
    image = real_ihc_1024()
    rows = []
    for radius in (5, 30):
        config = MaskConfig(closing_radius=radius)
        ref = reference_mask(image, radius)
        ours = dab_mask(image, config)
        ref_ms = best_ms(lambda: reference_mask(image, radius), repeats_ref)
        ours_ms = best_ms(lambda: dab_mask(image, config), repeats_ours)
        rows.append({"radius": radius, "reference_ms": ref_ms, "ours_ms": ours_ms,
                     "ratio": ref_ms / ours_ms, "iou": iou(ours, ref)})
    return rows


def build_benchmark(n_pairs: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "data", n_train=n_pairs, n_val=0, config=SynthConfig(size=1024), seed=1)
        sources = detect(tmp / "data")
        config = BuildConfig(mask=MaskConfig(closing_radius=30), shard_size=2)
        for jobs in (1, 2):
            out = tmp / f"out{jobs}"
            finished = []
            start = time.perf_counter()
            summary = build(sources, out, config, jobs=jobs,
                            on_shard=lambda e: finished.append((time.perf_counter(), e["n_pairs"])))
            seconds = time.perf_counter() - start
            assert summary.samples == n_pairs
            # steady state: from the first finished shard to the last (worker start-up excluded)
            steady_pairs = sum(n for _, n in finished[1:])
            steady_s = finished[-1][0] - finished[0][0]
            mb = sum(p.stat().st_size for p in out.rglob("*.h5")) / n_pairs / 1e6
            rows.append({"jobs": jobs, "pairs": n_pairs, "seconds": seconds, "pairs_per_s": n_pairs / seconds,
                         "steady_pairs_per_s": steady_pairs / steady_s,
                         "ms_per_pair_per_core": 1e3 * jobs * steady_s / steady_pairs, "mb_per_pair": mb})
    for row in rows:
        row["speedup_vs_1"] = row["pairs_per_s"] / rows[0]["pairs_per_s"]
        row["steady_speedup_vs_1"] = row["steady_pairs_per_s"] / rows[0]["steady_pairs_per_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and pairs (a smoke run)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/prep_masks.json"))
    args = parser.parse_args()
    quick = args.quick
    print(f"machine: {os.cpu_count()} CPUs; OpenCV {cv2.__version__}, one thread for the mask comparison")

    masks = mask_benchmark(repeats_ref=1 if quick else 3, repeats_ours=5 if quick else 20)
    print("\nEq. 1 on a real 1024x1024 IHC tile (best of repeats)")
    print(f"{'r':>4} {'reference ms':>13} {'ours ms':>9} {'ratio':>8} {'IoU':>8}")
    for row in masks:
        print(f"{row['radius']:>4} {row['reference_ms']:>13.1f} {row['ours_ms']:>9.2f} "
              f"{row['ratio']:>7.0f}x {row['iou']:>8.5f}")

    builds = build_benchmark(8 if quick else 48)
    print("\nFull build of synthetic 1024x1024 JPEG pairs (read, check, unmix, mask r=30, write, checksum)")
    print("(wall: whole call incl. worker start-up; steady: first to last finished shard)")
    print(f"{'workers':>8} {'pairs':>6} {'wall s':>7} {'pairs/s':>8} {'steady pairs/s':>15} "
          f"{'ms/pair/core':>13} {'MB/pair':>8}")
    for row in builds:
        print(f"{row['jobs']:>8} {row['pairs']:>6} {row['seconds']:>7.2f} {row['pairs_per_s']:>8.2f} "
              f"{row['steady_pairs_per_s']:>15.2f} {row['ms_per_pair_per_core']:>13.1f} {row['mb_per_pair']:>8.2f}")
    print(f"2 workers vs 1: {builds[1]['speedup_vs_1']:.2f}x wall, {builds[1]['steady_speedup_vs_1']:.2f}x steady")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"masks": masks, "builds": builds}, indent=2) + "\n")
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
