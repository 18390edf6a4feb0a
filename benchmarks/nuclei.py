"""Nucleus counters on held-out synthetic IHC tiles: accuracy and speed.

Run: ``python benchmarks/nuclei.py [--weights PATH] [--tiles N] [--size PX] [--device cuda]``.

For each counter (classical, on hema for the membranous pattern and on
hema+dab for the nuclear one, as build-masks chooses; cppnet with the given
or bundled weights, hematoxylin only) and
each DAB pattern: instance F1 at IoU 0.5 against the exact synthetic labels,
mean absolute relative count error, and nuclei/s (wall time of ``detect`` on
one tile, OpenCV and torch limited to one thread on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_prep.nuclei import make_counter  # noqa: E402
from atst_prep.nuclei.metrics import count_error, instance_f1  # noqa: E402
from atst_prep.stain import dab_and_hematoxylin  # noqa: E402
from atst_prep.synth import SynthConfig, render_pair  # noqa: E402

HELD_OUT_SEED = 50_000  # far from every seed used for training or tuning


def held_out_tiles(n: int, size: int, pattern: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    tiles = []
    for i in range(n):
        pair = render_pair(SynthConfig(size=size, pattern=pattern, negative_pair_rate=0.0), HELD_OUT_SEED + i)
        dab, hema = dab_and_hematoxylin(pair.ihc)
        tiles.append((hema, dab, pair.truth["nucleus_labels_ihc"]))
    return tiles


def evaluate(counter, tiles) -> dict:
    f1s, errors, nuclei, seconds = [], [], 0, 0.0
    counter.detect(*tiles[0][:2])  # warm-up (first call allocates, compiles kernels)
    for hema, dab, truth in tiles:
        start = time.perf_counter()
        found = counter.detect(hema, dab)
        seconds += time.perf_counter() - start
        n_true = len(np.unique(truth)) - 1
        f1s.append(instance_f1(found.labels, truth).f1)
        errors.append(count_error(len(found), n_true))
        nuclei += len(found)
    return {"f1": float(np.mean(f1s)), "f1_min": float(np.min(f1s)), "count_error": float(np.mean(errors)),
            "count_error_max": float(np.max(errors)), "nuclei_per_s": nuclei / seconds,
            "ms_per_tile": 1e3 * seconds / len(tiles)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="CPP-Net checkpoint (default: bundled)")
    parser.add_argument("--tiles", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/nuclei.json"))
    args = parser.parse_args()
    if args.device == "cpu":
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
    cppnet = make_counter("cppnet", weights=args.weights, device=args.device)
    # the classical counter runs on the channel build-masks picks for the marker
    channels = {"membranous": "hema", "nuclear": "hema+dab"}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU, 1 thread"
    print(f"held-out synthetic IHC tiles: {args.tiles} per pattern, {args.size} px; cppnet on {device_name}")
    print(f"{'counter':>10} {'pattern':>11} {'F1@0.5':>7} {'min F1':>7} {'count err':>10} {'max err':>8} "
          f"{'ms/tile':>8} {'nuclei/s':>9}")
    results = {}
    for pattern in ("membranous", "nuclear"):
        tiles = held_out_tiles(args.tiles, args.size, pattern)
        counters = {"classical": make_counter("classical", channel=channels[pattern]), "cppnet": cppnet}
        for name, counter in counters.items():
            r = evaluate(counter, tiles)
            results[f"{name}/{pattern}"] = r
            print(f"{name:>10} {pattern:>11} {r['f1']:>7.3f} {r['f1_min']:>7.3f} {r['count_error']:>9.1%} "
                  f"{r['count_error_max']:>8.1%} {r['ms_per_tile']:>8.1f} {r['nuclei_per_s']:>9.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": device_name, "size": args.size, "tiles": args.tiles,
                                     "results": results}, indent=2) + "\n")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
