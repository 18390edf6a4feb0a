"""Train the small G1 that ships with the toolkit (``atst_model/weights/g1-tiny-synthetic.pt``).

Run: ``python benchmarks/train_demo_g1.py [--pretrain 1000] [--steps 0] [--out atst_model/weights/g1-tiny-synthetic.pt]``
(CPU, ~6 min on one core).

``make demo`` fine-tunes from this G1 (the ``demo`` preset's ``init_g1``), so
its stained slide and sample grids show a recognisable stain after a few CPU
steps instead of noise. It is ``g1-tiny`` (0.4 M parameters, 1.6 MB), trained
in two phases on synthetic HER2-like pairs (:mod:`atst_prep.synth`, MIST
resolution: 512 px tiles at scale 1, 224 px crops):

1. ``--pretrain`` steps of a plain pixel loss (L1) against the IHC of the
   *same* section, rendered without misalignment: a pairing real data never
   has, used here only because a tiny network on a CPU cannot learn the look
   of IHC from the adversarial loss in minutes (the GAN alone gives washed,
   colour-inverted fakes at this budget: RESULTS.md);
2. optionally (``--steps N``), N steps of the ATST-Net paper recipe (CycleGAN +
   L1-L5) on the usual consecutive-section pairs, from those weights. Off by
   default: 150 such steps after 500 of phase 1 turned the background yellow
   and lost the brown (``demo-g1/samples-pretrain500-atst150.png``), while
   1000 steps of phase 1 alone give lavender background, blue nuclei and
   brown in the positive regions (``demo-g1/samples.png``). ``make demo``'s
   own 20 steps are the ATST recipe, from these weights.

It has never seen a real slide and is not for diagnosis. Writes the weights,
a sample sheet (H&E | fake IHC | real IHC of held-out tiles) and the loss
curves beside this script in ``demo-g1/``.
"""

from __future__ import annotations

import argparse
import os
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


def pretrain(folder: Path, steps: int, batch: int) -> dict:
    """Phase 1: G1 alone, L1 pixel loss to the aligned IHC of the same synthetic section; returns its state dict."""
    from atst_model.networks import create_network

    aligned = SynthConfig(size=512, he_cue=0.3, max_shift=0.0, max_rotation=0.0, elastic_amplitude=0.0,
                          nucleus_drop_rate=0.0, nucleus_add_rate=0.0, nucleus_jitter_rate=0.0)
    root = write_dataset(folder, n_train=24, n_val=0, config=aligned, marker="HER2", seed=200) / "TrainValAB"
    pairs = [(read_rgb(p), read_rgb(root / "trainB" / p.name)) for p in sorted((root / "trainA").glob("*.jpg"))]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    g1 = create_network("g1-tiny", mode="native")
    opt = torch.optim.Adam(g1.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def unit(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 127.5 - 1

    for step in range(1, steps + 1):
        he, ihc = [], []
        for i in rng.integers(0, len(pairs), batch):
            y, x = rng.integers(0, 512 - CROP + 1, 2)
            k = int(rng.integers(0, 4))
            he.append(np.rot90(pairs[i][0][y:y + CROP, x:x + CROP], k))
            ihc.append(np.rot90(pairs[i][1][y:y + CROP, x:x + CROP], k))
        loss = (g1(unit(np.stack(he))) - unit(np.stack(ihc))).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"pretrain step {step}: L1 {loss.item():.4f}", flush=True)
    return {k: v.detach().clone() for k, v in g1.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=int, default=1000, help="pixel-loss steps on aligned pairs (phase 1)")
    parser.add_argument("--steps", type=int, default=0, help="ATST recipe steps after it (phase 2; 0: none)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    start = time.perf_counter()
    pictures = HERE / "demo-g1"
    pictures.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = write_dataset(tmp / "data", n_train=48, n_val=4, config=SynthConfig(size=512, he_cue=0.3),
                             marker="HER2", seed=100)
        pretrained = pretrain(tmp / "aligned", args.pretrain, args.batch * 2)
        st.save(tmp / "pretrained.pt", {"g1": pretrained})
        build(detect(root.parents[1]), tmp / "shards", BuildConfig(
            mask=MaskConfig(closing_radius=5), shard_size=16, counter="classical", window=CROP,
            window_stride=CROP // 2), jobs=1)
        config = with_recipe(TrainerConfig(
            shards=str(tmp / "shards" / "mist-her2"), out=str(tmp / "run"), g1="g1-tiny", g2="g2-tiny", d="d-tiny",
            g1_mode="native", crop=CROP, batch=args.batch, lr=1e-3, precision="fp32", num_workers=1, pool_size=10,
            checkpoint_every=10 ** 6, sample_every=10 ** 6, log_every=50, seed=0, aux_warmup=args.steps,
            init_g1=str(tmp / "pretrained.pt")), "paper")
        config = TrainerConfig.from_dict({**config.to_dict(), "max_steps": max(args.steps, 1), "epochs": 10 ** 4})
        trainer = Trainer(config, device="cpu", resume=None, dist_info=Dist())
        rows = trainer.run(on_step=lambda step, row: print(
            f"step {step}: G {row['g_total']:.3f}  L1 {row['aux_l1']:.3f}  L4 {row['aux_l4']:.4f}", flush=True)
            if step % 100 == 0 else None) if args.steps else []
        if not args.steps:
            trainer.g1.load_state_dict(pretrained)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        st.save(args.out, {"g1": {k: v.detach().clone() for k, v in trainer.g1.state_dict().items()},
                           "network": "g1-tiny", "pretrain_steps": args.pretrain, "steps": args.steps,
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
        if rows:
            loss_curves(rows, pictures / "curves.png")
    print(f"{(time.perf_counter() - start) / 60:.1f} min; weights {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB), pictures in {pictures}/")


if __name__ == "__main__":
    main()
