"""Does auxiliary supervision make the stain right? The paper's Table 2 ablation on a synthetic task with exact truth.

Run: ``python benchmarks/ablation.py [--seeds 3] [--out benchmarks/ablation-cpu]``
(CPU, tiny networks, ~15-20 min on 2 cores) or ``--full --device cuda``
(ViT-B G1 at MIST size; hours on one GPU).

One command: renders the task (:mod:`atst_model.eval.ablation`), builds its
shards with ``build-masks``, scores the real test IHC against its own truth
(the ceiling of Eq. 1 and the nucleus counter), then trains every variant
(plain CycleGAN, +L1, +L2/L3, +L4, +L5) for each seed with the same data,
steps and batch, stains the test H&E with its G1 and scores it against the
truth. Writes ``ablation.json`` (every tile of every run), ``table.md``
(mean and standard deviation over seeds) and ``ablation.png`` (bar chart),
and prints the table and whether the full model's Dice beats plain
CycleGAN's by more than the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_model.eval import ablation as A  # noqa: E402

#: Columns of the table: (summary key, header, digits).
COLUMNS = (("dice", "Dice", 3), ("iou", "IoU", 3), ("dab_abs_error", "abs DAB error", 4),
           ("count_rel_error", "count rel. error", 2), ("psnr", "PSNR", 2), ("ssim", "SSIM", 3))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def table(results: dict[str, list[dict]], oracle: dict) -> str:
    """Markdown table: one row per variant, mean +- std over seeds; the oracle row last."""
    lines = ["| variant | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, runs in results.items():
        cells = []
        for key, _, digits in COLUMNS:
            m, s = mean_std([r[key] for r in runs])
            cells.append(f"{m:.{digits}f} ± {s:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| real IHC (ceiling) | " + " | ".join(
        "—" if key in ("psnr", "ssim", "dab_abs_error") else f"{oracle[key]:.{digits}f}"
        for key, _, digits in COLUMNS) + " |")
    return "\n".join(lines)


def bar_chart(path: Path, results: dict[str, list[dict]], keys=("dice", "iou", "count_rel_error")) -> None:
    """One panel per metric: a bar per variant (mean over seeds), a line for the spread, dots for seeds."""
    names, w, h, margin = list(results), 360, 300, 40
    canvas = np.full((h + 60, w * len(keys), 3), 255, np.uint8)
    colours = [(180, 180, 180), (232, 180, 120), (200, 130, 60), (120, 90, 180), (40, 60, 200)]
    for p, key in enumerate(keys):
        x0 = p * w
        values = {n: [r[key] for r in results[n]] for n in names}
        top = max(max(v) for v in values.values()) * 1.15 or 1.0
        scale = (h - 2 * margin) / top
        cv2.putText(canvas, key, (x0 + margin, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        base = h - margin
        cv2.line(canvas, (x0 + margin - 5, base), (x0 + w - 10, base), (0, 0, 0), 1)
        cv2.putText(canvas, f"{top:.2f}", (x0 + 2, margin + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
        bw = (w - margin - 20) // len(names)
        for i, n in enumerate(names):
            m, s = mean_std(values[n])
            left = x0 + margin + i * bw + 4
            cv2.rectangle(canvas, (left, int(base - m * scale)), (left + bw - 8, base), colours[i % 5], -1)
            cx = left + (bw - 8) // 2
            cv2.line(canvas, (cx, int(base - (m - s) * scale)), (cx, int(base - (m + s) * scale)), (0, 0, 0), 1)
            for v in values[n]:
                cv2.circle(canvas, (cx, int(base - v * scale)), 2, (0, 0, 0), -1)
            label = n.replace(" (full)", "")
            cv2.putText(canvas, label, (left, base + 16 + 14 * (i % 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                        (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def verdict(results: dict[str, list[dict]]) -> str:
    full, plain = (mean_std([r["dice"] for r in results[k]]) for k in ("+L5 (full)", "cyclegan"))
    margin, spread = full[0] - plain[0], max(full[1], plain[1])
    holds = margin > spread and margin > 0
    return (f"full model Dice {full[0]:.3f} ± {full[1]:.3f} vs plain CycleGAN {plain[0]:.3f} ± {plain[1]:.3f}: "
            f"margin {margin:+.3f}, seed spread (largest std) {spread:.3f} -> "
            f"{'the claim holds' if holds else 'NOT shown on this budget'}")


def _plain(x):
    """JSON-safe copy: NaN -> null, numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if math.isnan(x) else float(x)
    return x.item() if isinstance(x, np.generic) else x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="training steps per run (default: the budget's)")
    parser.add_argument("--variants", default=",".join(A.VARIANTS), help="comma-separated subset of the rows")
    parser.add_argument("--full", action="store_true", help="ViT-B G1 at MIST size (a GPU job)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/ablation-<cpu|full>)")
    parser.add_argument("--work", type=Path, help="where data, shards and runs go (default: a temporary folder)")
    args = parser.parse_args()
    budget = A.GPU_BUDGET if args.full else A.CPU_BUDGET
    if args.steps:
        budget = replace(budget, steps=args.steps)
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in A.VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; valid: {', '.join(A.VARIANTS)}")
    out = args.out or Path(__file__).resolve().parent / f"ablation-{'full' if args.full else 'cpu'}"
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        root = A.write_task(work / "data", budget)
        shards = A.build_shards(root, work / "shards", budget)
        oracle = A.oracle_scores(root, budget)
        print(f"task ready in {time.perf_counter() - start:.0f} s; real IHC vs truth: Dice {oracle['dice']:.3f}",
              flush=True)
        results: dict[str, list[dict]] = {v: [] for v in variants}
        tiles: dict[str, list] = {}
        grids = []
        for seed in range(args.seeds):
            for v in variants:
                trainer, seconds = A.timed(A.train_variant, shards, work / "runs" / f"{v}-{seed}", budget,
                                           A.VARIANTS[v], seed, device=args.device)
                (summary, rows, images), _ = A.timed(A.score_generator, trainer.g1, root, budget, args.device,
                                                      keep_images=2 if seed == 0 else 0)
                summary.update(seed=seed, train_seconds=seconds)
                results[v].append(summary)
                tiles[f"{v}/{seed}"] = rows
                grids += images
                print(f"{v:<11} seed {seed}: Dice {summary['dice']:.3f}  IoU {summary['iou']:.3f}  "
                      f"|DAB err| {summary['dab_abs_error']:.4f}  count err {summary['count_rel_error']:.2f}  "
                      f"({seconds:.0f} s)", flush=True)
    text = table(results, oracle)
    report = {"budget": {**asdict(budget), "task": asdict(budget.task)}, "device": args.device,
              "seeds": args.seeds, "oracle": oracle, "runs": results, "tiles": tiles, "verdict": verdict(results),
              "minutes": (time.perf_counter() - start) / 60}
    (out / "ablation.json").write_text(json.dumps(_plain(report), indent=1) + "\n")
    (out / "table.md").write_text(text + "\n\n" + report["verdict"] + "\n")
    bar_chart(out / "ablation.png", results)
    if grids:  # H&E | fake IHC | real IHC of the first test tiles, one row per variant, seed 0
        cv2.imwrite(str(out / "samples.png"), cv2.cvtColor(np.concatenate(grids, axis=0), cv2.COLOR_RGB2BGR))
    print("\n" + text + "\n\n" + report["verdict"])
    print(f"\n{report['minutes']:.1f} min; results in {out}/ (table.md, ablation.png, samples.png, ablation.json)")


if __name__ == "__main__":
    main()
