"""Alignment scoring of H&E/IHC pairs with known misalignment: accuracy, drop rates, speed.

Run: ``python benchmarks/alignment.py [--quick]``.

1. Synthetic 1024x1024 pairs (``atst_prep.synth``, default 2 px elastic
   deformation): a group shifted uniformly in |shift| <= 64 px (any
   direction, |rotation| <= 2 deg), a group rotated 5-10 deg (|shift| <= 8),
   and a well-aligned group (|shift| <= 8 px, |rotation| <= 2 deg); then a
   third as many without the elastic deformation, whose mean displacement
   over the tile (up to ~1.5 px) no translation estimate can tell from the
   true shift.
2. The same on the real H&E slide of ``tests/data`` (1024 px tiles, its
   hematoxylin re-rendered as an IHC-like image under the known transform,
   1.5 px elastic; ``atst_prep.align.realpairs``).

Printed: the error of the estimated shift (median, 95th percentile, max)
against the true translation, the rotation error, the share of misaligned
pairs (|shift| > 32 px or |rotation| > 5 deg) and of well-aligned pairs
that the default rule drops, and pairs/s of the scoring on one core. The
synthetic pairs are also written as a MIST-like tree and run through
``build-masks`` and ``filter-misaligned`` (one worker) for the end-to-end rate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_prep.align.realpairs import misaligned_pair  # noqa: E402
from atst_prep.align.score import align_pair, reduce, tissue_region  # noqa: E402
from atst_prep.align.select import select  # noqa: E402
from atst_prep.align.store import filter_misaligned  # noqa: E402
from atst_prep.build import BuildConfig, build  # noqa: E402
from atst_prep.mask import MaskConfig  # noqa: E402
from atst_prep.sources import detect  # noqa: E402
from atst_prep.stain import dab_and_hematoxylin  # noqa: E402
from atst_prep.synth import SynthConfig, render_pair  # noqa: E402

SIZE = 1024


def draws(n: int, seed: int) -> list[tuple[tuple[float, float], float, str]]:
    """(shift, rotation, group) for n pairs: 60 % shifted <= 64 px, 20 % rotated 5-10 deg, 20 % aligned."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        group = ("shifted", "shifted", "shifted", "rotated", "aligned")[i % 5]
        radius = rng.uniform(0, 64) if group == "shifted" else rng.uniform(0, 8)
        angle = rng.uniform(0, 2 * np.pi)
        rotation = rng.uniform(5, 10) * rng.choice([-1, 1]) if group == "rotated" else rng.uniform(-2, 2)
        out.append(((radius * math.cos(angle), radius * math.sin(angle)), float(rotation), group))
    return out


def evaluate(pairs, label: str) -> dict:
    """Score (he, ihc, shift, rotation) pairs; the figures of the module docstring."""
    cv2.setNumThreads(1)
    alignments, seconds = [], 0.0
    for he, ihc, _, _ in pairs:
        hema = dab_and_hematoxylin(ihc)[1]  # as a shard stores it (build-masks' work, not timed)
        start = time.perf_counter()
        alignments.append(align_pair(he, hema, ihc))
        seconds += time.perf_counter() - start
    truth = [(s, r) for _, _, s, r in pairs]
    errors = np.array([math.hypot(a.shift_x - s[0], a.shift_y - s[1]) for a, (s, _) in zip(alignments, truth)])
    rot_errors = np.array([abs(a.rotation - r) for a, (_, r) in zip(alignments, truth)])
    kept = np.array([d.kept for d in select(alignments, [SIZE] * len(pairs), ["all"] * len(pairs))])
    size = np.array([math.hypot(*s) for s, _ in truth])
    rot = np.abs([r for _, r in truth])
    rigid = rot <= 2
    misaligned = (size > 32) | (rot > 5)
    aligned = (size <= 8) & (rot <= 2)

    def stats(x):
        return {"n": int(x.size), "median": float(np.median(x)), "p95": float(np.percentile(x, 95)),
                "max": float(x.max())} if x.size else {"n": 0}

    return {"label": label, "pairs": len(pairs), "shift_error_px": stats(errors[rigid]),
            "shift_error_rotated_px": stats(errors[~rigid]), "rotation_error_deg": stats(rot_errors),
            "misaligned": int(misaligned.sum()), "misaligned_dropped": float(np.mean(~kept[misaligned])),
            "aligned": int(aligned.sum()), "aligned_dropped": float(np.mean(~kept[aligned])),
            "unscorable": int(sum(not a.scored for a in alignments)),
            "score_aligned_min": float(min(a.score for a, ok in zip(alignments, aligned) if ok)),
            "pairs_per_s": len(pairs) / seconds, "ms_per_pair": 1e3 * seconds / len(pairs)}


def synthetic_pairs(n: int, elastic: float = 2.0, seed: int = 1) -> list:
    config = SynthConfig(size=SIZE, max_shift=64, max_rotation=10, elastic_amplitude=elastic)
    out = []
    for i, (shift, rotation, _) in enumerate(draws(n, seed)):
        p = render_pair(config, 1000 + i, shift=shift, rotation=rotation)
        out.append((p.he, p.ihc, shift, rotation, p))
    return out


def real_pairs(n: int) -> list:
    from tests.realslide import read_slide

    slide = read_slide()
    margin = 160
    origins = [(x, y) for y in range(margin, slide.shape[0] - SIZE - margin, 128)
               for x in range(margin, slide.shape[1] - SIZE - margin, 128)
               if tissue_region(reduce(slide[y:y + SIZE, x:x + SIZE], 8)).mean() > 0.6]
    out = []
    for i, (shift, rotation, _) in enumerate(draws(n, 2)):
        p = misaligned_pair(slide, origins[(i * 7) % len(origins)], SIZE, shift, rotation, seed=i)
        out.append((p.he, p.ihc, shift, rotation))
    return out, len(origins)


def end_to_end(pairs: list) -> dict:
    """Write the synthetic pairs as MIST, build shards (no counter), time filter-misaligned on one worker."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "data" / "MIST" / "HER2" / "TrainValAB"
        for side in ("trainA", "trainB"):
            (folder / side).mkdir(parents=True)
        for i, (*_, p) in enumerate(pairs):
            (folder / "trainA" / f"p{i:04d}.jpg").write_bytes(p.he_jpeg)
            (folder / "trainB" / f"p{i:04d}.jpg").write_bytes(p.ihc_jpeg)
        build(detect(tmp / "data"), tmp / "shards", BuildConfig(mask=MaskConfig(closing_radius=30)))
        start = time.perf_counter()
        summary = filter_misaligned(tmp / "shards", keep_list=tmp / "keep.csv", jobs=1)
        seconds = time.perf_counter() - start
    return {"pairs": summary.pairs, "seconds": seconds, "pairs_per_s": summary.pairs / seconds,
            "kept": summary.kept}


def show(r: dict) -> None:
    e, er, ro = r["shift_error_px"], r["shift_error_rotated_px"], r["rotation_error_deg"]
    print(f"\n{r['label']}: {r['pairs']} pairs, {r['unscorable']} unscorable")
    print(f"  shift error, |rotation| <= 2 deg ({e['n']} pairs, |shift| <= 64 px): median {e['median']:.2f} px, "
          f"95th pct {e['p95']:.2f} px, max {e['max']:.2f} px")
    if er["n"]:
        print(f"  shift error, rotated 5-10 deg ({er['n']} pairs): median {er['median']:.2f} px, "
              f"max {er['max']:.2f} px")
    print(f"  rotation error: median {ro['median']:.2f} deg, max {ro['max']:.2f} deg")
    print(f"  misaligned (> 32 px or > 5 deg) dropped: {r['misaligned_dropped']:.1%} of {r['misaligned']}")
    print(f"  well-aligned (<= 8 px, <= 2 deg) dropped: {r['aligned_dropped']:.1%} of {r['aligned']} "
          f"(lowest score {r['score_aligned_min']:.3f})")
    print(f"  scoring, one core: {r['pairs_per_s']:.1f} pairs/s ({r['ms_per_pair']:.0f} ms per pair)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs (a smoke run)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/alignment.json"))
    args = parser.parse_args()
    n_synth, n_real = (10, 10) if args.quick else (60, 40)
    print(f"OpenCV {cv2.__version__}, one thread; tiles {SIZE} px")
    synth = synthetic_pairs(n_synth)
    results = {"synthetic": evaluate([p[:4] for p in synth], "synthetic (atst_prep.synth)")}
    show(results["synthetic"])
    rigid = synthetic_pairs(n_synth // 3, elastic=0.0, seed=3)
    results["synthetic_rigid"] = evaluate([p[:4] for p in rigid], "synthetic without elastic deformation "
                                          "(the estimator's own error)")
    show(results["synthetic_rigid"])
    real, n_origins = real_pairs(n_real)
    results["real"] = evaluate(real, f"real H&E slide re-stained ({n_origins} tile positions)")
    show(results["real"])
    results["end_to_end"] = end_to_end(synth)
    e = results["end_to_end"]
    print(f"\nfilter-misaligned on shards (read H&E, IHC, hematoxylin from HDF5; score; write), one worker: "
          f"{e['pairs']} pairs in {e['seconds']:.1f} s = {e['pairs_per_s']:.1f} pairs/s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
