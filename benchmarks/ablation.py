"""Does auxiliary supervision make the stain right? The paper's Table 2 ablation on a synthetic task with exact truth.

Run: ``python benchmarks/ablation.py [--seeds 3] [--out benchmarks/ablation-cpu]``
(CPU, tiny networks, ~35 min on 2 cores for the five rows; ~14 min for two) or ``--full --device cuda``
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
COLUMNS = (("dice", "Dice", 3), ("iou", "IoU", 3), ("region_auc", "region AUC", 3), ("dab_abs_error", "abs DAB error", 4),
           ("count_rel_error", "count rel. error", 2), ("psnr", "PSNR", 2), ("ssim", "SSIM", 3))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def table(results: dict[str, list[dict]], oracle: dict, trivial: dict) -> str:
    """Markdown table: one row per variant, mean +- std over seeds; the trivial and the oracle rows last."""
    lines = ["| variant | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, runs in results.items():
        cells = []
        for key, _, digits in COLUMNS:
            m, s = mean_std([r[key] for r in runs])
            cells.append(f"{m:.{digits}f} ± {s:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| all tissue positive (trivial) | " + " | ".join(
        f"{trivial[key]:.{digits}f}" if key in trivial else "—" for key, _, digits in COLUMNS) + " |")
    lines.append("| real IHC (ceiling) | " + " | ".join(
        "—" if key in ("psnr", "ssim", "dab_abs_error") else f"{oracle[key]:.{digits}f}"
        for key, _, digits in COLUMNS) + " |")
    return "\n".join(lines)


def bar_chart(path: Path, results: dict[str, list[dict]], refs: dict[str, list[tuple[float, str]]],
              keys=("dice", "region_auc", "count_rel_error")) -> None:
    """One panel per metric: a bar per variant (mean over seeds), a line for +-1 std, a dot per seed,
    and dashed reference lines ``refs[key]`` = [(value, label), ...]."""
    names, w, h, margin = list(results), 360, 300, 40
    canvas = np.full((h + 40, w * len(keys), 3), 255, np.uint8)
    colours = [(180, 180, 180), (232, 180, 120), (200, 130, 60), (120, 90, 180), (40, 60, 200)]
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, key in enumerate(keys):
        x0 = p * w
        values = {n: [r[key] for r in results[n]] for n in names}
        top = max([max(v) for v in values.values()] + [v for v, _ in refs.get(key, [])]) * 1.1 or 1.0
        base, scale = h - margin, (h - 2 * margin) / top

        def y(v: float) -> int:
            return int(base - min(max(v, 0.0), top) * scale)

        cv2.putText(canvas, f"{key}  (axis 0 - {top:.2f})", (x0 + margin, 24), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.line(canvas, (x0 + margin - 5, base), (x0 + w - 10, base), (0, 0, 0), 1)
        bw = (w - margin - 20) // len(names)
        for i, n in enumerate(names):
            m, s = mean_std(values[n])
            left = x0 + margin + i * bw + 4
            cv2.rectangle(canvas, (left, y(m)), (left + bw - 8, base), colours[i % 5], -1)
            cx = left + (bw - 8) // 2
            cv2.line(canvas, (cx, y(m - s)), (cx, y(m + s)), (0, 0, 0), 1)
            for v in values[n]:
                cv2.circle(canvas, (cx, y(v)), 2, (0, 0, 0), -1)
            cv2.putText(canvas, n.replace(" (full)", ""), (left, base + 16 + 14 * (i % 2)), font, 0.38, (0, 0, 0), 1,
                        cv2.LINE_AA)
        for value, label in refs.get(key, []):
            for x in range(x0 + margin - 5, x0 + w - 10, 8):
                cv2.line(canvas, (x, y(value)), (x + 4, y(value)), (90, 90, 90), 1)
            cv2.putText(canvas, label, (x0 + w - 120, y(value) - 4), font, 0.35, (90, 90, 90), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


CURVE_KEYS = ("adv_g1", "cycle", "aux_l1", "aux_l4", "aux_l5", "d_ihc")


def curves(path: Path, history: dict[str, list[list[dict]]], keys=CURVE_KEYS) -> None:
    """Learning curves: one panel per loss, one line per variant (mean over seeds, running mean of 10 steps)."""
    w, h, margin = 320, 220, 30
    canvas = np.full((h, w * len(keys), 3), 255, np.uint8)
    colours = [(150, 150, 150), (232, 180, 120), (200, 130, 60), (120, 90, 180), (40, 60, 200)]
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, key in enumerate(keys):
        lines = {}
        for name, seeds in history.items():
            n = min(len(rows) for rows in seeds)
            v = np.mean([[r[key] for r in rows[:n]] for rows in seeds], axis=0)
            lines[name] = np.convolve(v, np.ones(10) / 10, mode="valid") if len(v) > 10 else v
        lo = min(float(v.min()) for v in lines.values())
        hi = max(float(v.max()) for v in lines.values())
        cv2.putText(canvas, f"{key}  {lo:.3g} - {hi:.3g}", (p * w + margin, 16), font, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        for i, (name, v) in enumerate(lines.items()):
            xs = np.linspace(p * w + margin, (p + 1) * w - 10, len(v))
            ys = h - margin - (v - lo) / max(hi - lo, 1e-12) * (h - 2 * margin - 10)
            cv2.polylines(canvas, [np.stack([xs, ys], 1).astype(np.int32)], False, colours[i % 5], 1, cv2.LINE_AA)
            if p == 0:
                cv2.putText(canvas, name, (margin + 4, h - 8 - 12 * (len(lines) - 1 - i)), font, 0.35,
                            colours[i % 5], 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def verdict(results: dict[str, list[dict]]) -> str:
    """Does the full model beat plain CycleGAN by more than the seed-to-seed spread? (Dice, then region AUC.)"""
    lines = []
    for key, name in (("dice", "Dice"), ("region_auc", "region AUC")):
        full, plain = (mean_std([r[key] for r in results[k]]) for k in ("+L5 (full)", "cyclegan"))
        margin, spread = full[0] - plain[0], max(full[1], plain[1])
        holds = margin > spread and margin > 0
        lines.append(f"full model {name} {full[0]:.3f} ± {full[1]:.3f} vs plain CycleGAN {plain[0]:.3f} ± "
                     f"{plain[1]:.3f}: margin {margin:+.3f}, seed spread (largest std) {spread:.3f} -> "
                     f"{'better by more than the spread' if holds else 'NOT shown on this budget'}")
    return "\n".join(lines)


def render(out: Path, report: dict) -> str:
    """table.md and ablation.png from a report (as written to ablation.json); returns the table and verdict."""
    results, oracle, trivial = report["runs"], report["oracle"], report["all_tissue"]
    text = table(results, oracle, trivial) + "\n\n" + verdict(results)
    (out / "table.md").write_text(text + "\n")
    refs = {"dice": [(trivial["dice"], "all tissue"), (oracle["dice"], "real IHC")],
            "region_auc": [(0.5, "chance"), (oracle["region_auc"], "real IHC")]}
    bar_chart(out / "ablation.png", results, refs)
    if report.get("history"):
        curves(out / "curves.png", report["history"])
    return text


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
    parser.add_argument("--render", type=Path, metavar="ABLATION_JSON",
                        help="only redraw table.md and ablation.png from a saved ablation.json, beside it")
    args = parser.parse_args()
    if args.render:
        print(render(args.render.parent, json.loads(args.render.read_text())))
        return
    budget = A.GPU_BUDGET if args.full else A.CPU_BUDGET
    if args.steps:
        budget = replace(budget, steps=args.steps)
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in variants if v not in A.VARIANTS]
    if unknown or "cyclegan" not in variants or "+L5 (full)" not in variants:
        parser.error(f"--variants must name cyclegan and '+L5 (full)' and only rows of: {', '.join(A.VARIANTS)}")
    out = args.out or Path(__file__).resolve().parent / f"ablation-{'full' if args.full else 'cpu'}"
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        root = A.write_task(work / "data", budget)
        shards = A.build_shards(root, work / "shards", budget)
        oracle, trivial = A.oracle_scores(root, budget), A.all_tissue_scores(root)
        print(f"task ready in {time.perf_counter() - start:.0f} s; real IHC vs truth: Dice {oracle['dice']:.3f}; "
              f"'all tissue positive': Dice {trivial['dice']:.3f}", flush=True)
        results: dict[str, list[dict]] = {v: [] for v in variants}
        history: dict[str, list[list[dict]]] = {v: [] for v in variants}
        tiles: dict[str, list] = {}
        grids = []
        for seed in range(args.seeds):
            for v in variants:
                trainer, seconds = A.timed(A.train_variant, shards, work / "runs" / f"{v}-{seed}", budget,
                                           A.VARIANTS[v], seed, device=args.device)
                (summary, rows, images), _ = A.timed(A.score_generator, trainer.g1, root, budget, args.device,
                                                      keep_images=1 if seed == 0 else 0)
                summary.update(seed=seed, train_seconds=seconds)
                results[v].append(summary)
                history[v].append([{k: r[k] for k in ("step", *CURVE_KEYS)} for r in trainer.history])
                tiles[f"{v}/{seed}"] = rows
                grids += images
                print(f"{v:<11} seed {seed}: Dice {summary['dice']:.3f}  IoU {summary['iou']:.3f}  "
                      f"AUC {summary['region_auc']:.3f}  |DAB err| {summary['dab_abs_error']:.4f}  "
                      f"count err {summary['count_rel_error']:.2f}  ({seconds:.0f} s)", flush=True)
    report = _plain({"budget": {**asdict(budget), "task": asdict(budget.task)}, "device": args.device,
                     "seeds": args.seeds, "oracle": oracle, "all_tissue": trivial, "runs": results, "tiles": tiles,
                     "history": history,
                     "minutes": (time.perf_counter() - start) / 60})
    (out / "ablation.json").write_text(json.dumps(report, indent=1) + "\n")
    text = render(out, report)
    if grids:  # H&E | fake IHC | real IHC of the first test tile, one row per variant, seed 0, half size
        sheet = cv2.resize(np.concatenate(grids, axis=0), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / "samples.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print("\n" + text)
    print(f"\n{report['minutes']:.1f} min; results in {out}/ (table.md, ablation.png, curves.png, samples.png, "
          "ablation.json)")


if __name__ == "__main__":
    main()
