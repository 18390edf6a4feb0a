"""The full model of the synthetic ablation under other auxiliary settings: a scale on b1..b5, a warm-up, steps.

Run: ``python benchmarks/ablation_sweep.py --scales 1,0.1 --seeds 0,1,2 [--steps 200] [--warmup 100]
[--out FILE.json]`` (CPU, ~80 s per run on 2 cores at 200 steps).

Same task, shards and scoring as ``benchmarks/ablation.py``; each run trains the
"+L5 (full)" variant with weights ``scale x (60, 10, 10, 20, 1)`` and prints its
Dice, region AUC and PSNR against the truth, and the last 20 steps' mean
discriminator loss on IHC (``d_ihc``; near 0 when the discriminator wins, i.e.
the fakes do not look like IHC) and adversarial loss of G1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_model.eval import ablation as A  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=0, help="aux_warmup steps")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    budget = replace(A.CPU_BUDGET, steps=args.steps, aux_warmup=args.warmup)
    full = A.VARIANTS["+L5 (full)"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = A.write_task(tmp / "data", budget)
        shards = A.build_shards(root, tmp / "shards", budget)
        for scale in (float(s) for s in args.scales.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                start = time.perf_counter()
                trainer = A.train_variant(shards, tmp / f"run-{scale}-{seed}", budget, tuple(w * scale for w in full),
                                          seed)
                summary, _, _ = A.score_generator(trainer.g1, root, budget)
                last = trainer.history[-20:]
                summary.update(d_ihc_last20=float(np.mean([r["d_ihc"] for r in last])),
                               adv_g1_last20=float(np.mean([r["adv_g1"] for r in last])))
                results[f"scale {scale} seed {seed}"] = summary
                print(f"scale {scale} seed {seed}: Dice {summary['dice']:.3f}  AUC {summary['region_auc']:.3f}  "
                      f"PSNR {summary['psnr']:.2f}  d_ihc {summary['d_ihc_last20']:.3f}  "
                      f"adv {summary['adv_g1_last20']:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "warmup": args.warmup, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
