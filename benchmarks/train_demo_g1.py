"""Train the small G1 that ships with the toolkit (``atst_model/weights/g1-tiny-synthetic.pt``).

Run: ``python benchmarks/train_demo_g1.py [--steps 1500] [--out atst_model/weights/g1-tiny-synthetic.pt]``
(CPU, ~20-30 min on 2 cores).

``make demo`` fine-tunes from this G1 (the ``demo`` preset's ``init_g1``), so
its stained slide and sample grids show a recognisable stain after a few CPU
steps instead of noise. It is ``g1-tiny`` (0.4 M parameters, 1.6 MB) trained
with the paper recipe on synthetic HER2-like pairs (:mod:`atst_prep.synth`,
MIST resolution: 512 px tiles at scale 1, 224 px training windows); it has
never seen a real slide and is not for diagnosis. Writes the weights, a
sample sheet (H&E | fake IHC | real IHC of held-out tiles) and the loss
curves beside this script in ``demo-g1/``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atst_model.infer.translate import translate_image  # noqa: E402
from atst_model.train import state as st  # noqa: E402
from atst_model.train.config import TrainerConfig, with_recipe  # noqa: E402
from atst_model.train.trainer import Dist, Trainer  # noqa: E402
from atst_prep.build import BuildConfig, build  # noqa: E402
from atst_prep.images import read_rgb  # noqa: E402
from atst_prep.mask import MaskConfig  # noqa: E402
from atst_prep.sources import detect  # noqa: E402
from atst_prep.synth import SynthConfig, write_dataset  # noqa: E402

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE.parent / "atst_model" / "weights" / "g1-tiny-synthetic.pt"
CROP = 224


def loss_curves(rows: list[dict], path: Path, keys=("adv_g1", "cycle", "aux_l1", "aux_l4", "aux_l5")) -> None:
    """One panel per loss: its value per step (running mean over 20 steps), as a PNG."""
    w, h = 300, 180
    canvas = np.full((h, w * len(keys), 3), 255, np.uint8)
    for p, key in enumerate(keys):
        v = np.array([r[key] for r in rows], np.float64)
        v = np.convolve(v, np.ones(20) / 20, mode="valid") if len(v) > 20 else v
        lo, hi = float(v.min()), float(v.max()) or 1.0
        xs = np.linspace(p * w + 30, (p + 1) * w - 10, len(v))
        ys = h - 25 - (v - lo) / max(hi - lo, 1e-12) * (h - 55)
        cv2.polylines(canvas, [np.stack([xs, ys], 1).astype(np.int32)], False, (40, 60, 200), 1, cv2.LINE_AA)
        cv2.putText(canvas, f"{key} {lo:.3g}-{hi:.3g}", (p * w + 30, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    pictures = HERE / "demo-g1"
    pictures.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = write_dataset(tmp / "data", n_train=48, n_val=4, config=SynthConfig(size=512, he_cue=0.3),
                             marker="HER2", seed=100)
        build(detect(root.parents[1]), tmp / "shards", BuildConfig(
            mask=MaskConfig(closing_radius=5), shard_size=16, counter="classical", window=CROP,
            window_stride=CROP // 2), jobs=1)
        config = with_recipe(TrainerConfig(
            shards=str(tmp / "shards" / "mist-her2"), out=str(tmp / "run"), g1="g1-tiny", g2="g2-tiny", d="d-tiny",
            g1_mode="native", crop=CROP, batch=args.batch, lr=1e-3, precision="fp32", num_workers=1, pool_size=10,
            checkpoint_every=10 ** 6, sample_every=10 ** 6, log_every=50, seed=0), "paper")
        config = TrainerConfig.from_dict({**config.to_dict(), "max_steps": args.steps, "epochs": 10 ** 4})
        trainer = Trainer(config, device="cpu", resume=None, dist_info=Dist())
        rows = trainer.run(on_step=lambda step, row: print(
            f"step {step}: G {row['g_total']:.3f}  L1 {row['aux_l1']:.3f}  L4 {row['aux_l4']:.4f}", flush=True)
            if step % 100 == 0 else None)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        st.save(args.out, {"g1": {k: v.detach().clone() for k, v in trainer.g1.state_dict().items()},
                           "network": "g1-tiny", "steps": args.steps,
                           "trained_on": "synthetic HER2-like pairs (atst_prep.synth), benchmarks/train_demo_g1.py"})
        trainer.g1.eval()
        folder = root / "TrainValAB"
        sheet = []
        for path in sorted((folder / "valA").glob("*.jpg")):
            he, ihc = read_rgb(path), read_rgb(folder / "valB" / path.name)
            with torch.no_grad():
                fake = translate_image(trainer.g1, he, tile=CROP, overlap=CROP // 8, device="cpu", precision="fp32")
            sheet.append(np.concatenate([he, fake, ihc], axis=1))
        grid = cv2.resize(np.concatenate(sheet), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(pictures / "samples.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        loss_curves(rows, pictures / "curves.png")
    print(f"{(time.perf_counter() - start) / 60:.1f} min; weights {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB), pictures in {pictures}/")


if __name__ == "__main__":
    main()
