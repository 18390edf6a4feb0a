"""The paper's ablation (Table 2) on a synthetic paired task whose truth is exact.

The task (:data:`TASK`, :data:`FULL_TASK`) is rendered by
:func:`atst_prep.synth.write_dataset`: HER2-like membranous DAB on smooth
positive regions of the tissue; what tells positivity in the H&E is subtle
but visible (``he_cue``: positive nuclei are 30% larger and darker); the IHC
section is a consecutive one (nuclei dropped, added and moved, a random
shift, rotation and elastic warp between the sections); stain vectors,
white level and JPEG quality vary per image. Train and test splits come
from disjoint seeds; the test tiles' truth is in the H&E frame.

Each variant (:data:`VARIANTS`, the rows of the paper's Table 2 with our
generator) trains with the same data, steps, batch and seed; only the
auxiliary weights b1..b5 differ. Its G1 then stains the test H&E tiles and
:mod:`atst_model.eval.truth` scores them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from atst_prep.build import BuildConfig, build
from atst_prep.images import read_rgb, tissue_mask
from atst_prep.mask import MaskConfig
from atst_prep.nuclei import make_counter
from atst_prep.sources import detect
from atst_prep.synth import SynthConfig, load_truth, write_dataset

from ..infer.translate import translate_image
from ..train.config import TrainerConfig
from ..train.trainer import Dist, Trainer
from .truth import TileTruth, dice_iou, score_tile, summarise

__all__ = ["VARIANTS", "TASK", "FULL_TASK", "Budget", "CPU_BUDGET", "GPU_BUDGET", "write_task", "build_shards",
           "train_variant", "score_generator", "oracle_scores", "all_tissue_scores"]

#: Table 2's rows with our generator: auxiliary weights (b1, b2, b3, b4, b5) of L1..L5.
VARIANTS: dict[str, tuple[float, ...]] = {
    "cyclegan": (0.0, 0.0, 0.0, 0.0, 0.0),
    "+L1": (60.0, 0.0, 0.0, 0.0, 0.0),
    "+L2/L3": (60.0, 10.0, 10.0, 0.0, 0.0),
    "+L4": (60.0, 10.0, 10.0, 20.0, 0.0),
    "+L5 (full)": (60.0, 10.0, 10.0, 20.0, 1.0),
}

#: The CPU task: 256 px tiles showing a 512 px MIST field of view at half resolution.
TASK = SynthConfig(size=256, scale=0.5, pattern="membranous", he_cue=0.3, max_shift=4.0, max_rotation=1.0,
                   elastic_amplitude=1.0, positive_fraction=(0.05, 0.35), negative_pair_rate=0.15)
#: The same task at MIST's size and resolution (1024 px tiles, 512 crops), for a GPU.
FULL_TASK = replace(TASK, size=1024, scale=1.0, max_shift=16.0, elastic_amplitude=4.0)


@dataclass(frozen=True)
class Budget:
    """Everything a variant's training shares with the others."""

    task: SynthConfig
    closing_radius: int
    n_train: int
    n_test: int
    steps: int
    batch: int
    crop: int
    networks: tuple[str, str, str]
    g1_mode: str
    precision: str
    lr: float = 2e-4
    aux_warmup: int = 0


#: CPU: 200 steps with the auxiliary losses ramped in over the first 100 (from step 0 they stop the
#: GAN from learning the stain's look on so short a budget: RESULTS.md, synthetic ablation).
CPU_BUDGET = Budget(TASK, closing_radius=10, n_train=48, n_test=16, steps=200, batch=4, crop=96,
                    networks=("g1-tiny", "g2-tiny", "d-tiny"), g1_mode="native", precision="fp32", lr=1e-3,
                    aux_warmup=100)
GPU_BUDGET = Budget(FULL_TASK, closing_radius=30, n_train=400, n_test=100, steps=4000, batch=8, crop=512,
                    networks=("g1-vitb", "g2-resunet", "d-patchgan"), g1_mode="native", precision="bf16")


def write_task(out: Path, budget: Budget, seed: int = 0) -> Path:
    """Render the task's train and test pairs into ``out`` (MIST-like layout); returns the marker root."""
    return write_dataset(Path(out), n_train=budget.n_train, n_val=budget.n_test, config=budget.task,
                         marker="HER2", seed=seed)


def build_shards(root: Path, out: Path, budget: Budget, jobs: int = 1) -> Path:
    """``atst prep build-masks`` on the task (classical nucleus counter); returns the shard folder."""
    config = BuildConfig(mask=MaskConfig(closing_radius=budget.closing_radius), shard_size=64, counter="classical",
                         window=budget.crop, window_stride=budget.crop // 2)
    build(detect(Path(root).parents[1]), Path(out), config, jobs=jobs)
    return Path(out) / "mist-her2"


def train_variant(shards: Path, out: Path, budget: Budget, weights: tuple[float, ...], seed: int,
                  device: str = "cpu", on_step: Callable[[int, dict], None] | None = None, **overrides) -> Trainer:
    """Train one variant from scratch; returns the trainer (its ``g1`` is the H&E -> IHC generator,
    its ``history`` the logged row of every step). ``overrides`` are further :class:`TrainerConfig` fields."""
    g1, g2, d = budget.networks
    config = TrainerConfig(shards=str(shards), out=str(out), g1=g1, g2=g2, d=d, g1_mode=budget.g1_mode,
                           crop=budget.crop, batch=budget.batch, epochs=10_000, max_steps=budget.steps,
                           lr=budget.lr, aux_weights=weights, precision=budget.precision,
                           checkpoint_every=budget.steps, sample_every=budget.steps, log_every=10,
                           num_workers=1, pool_size=10, seed=seed, aux_warmup=budget.aux_warmup, **overrides)
    trainer = Trainer(config, device=device, resume=None, dist_info=Dist())
    trainer.history = trainer.run(on_step=on_step)
    return trainer


def _test_pairs(root: Path) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    truth = load_truth(Path(root) / "truth_val.npz")
    folder = Path(root) / "TrainValAB"
    return [(name, read_rgb(folder / "valA" / f"{name}.jpg"), read_rgb(folder / "valB" / f"{name}.jpg"), t)
            for name, t in sorted(truth.items())]


def score_generator(g1: torch.nn.Module, root: Path, budget: Budget, device: str = "cpu",
                    keep_images: int = 0) -> tuple[dict, list[dict], list[np.ndarray]]:
    """Stain the test H&E tiles with ``g1`` and score them; returns (summary, rows, first fake images)."""
    counter, config = make_counter("classical"), MaskConfig(closing_radius=budget.closing_radius)
    g1.eval()
    rows, images = [], []
    with torch.no_grad():
        for name, he, ihc, truth in _test_pairs(root):
            fake = translate_image(g1, he, tile=budget.crop, overlap=budget.crop // 8, device=device,
                                   precision=budget.precision)
            row = score_tile(fake, TileTruth.from_synth(truth, "he"), real_ihc=ihc,
                             real_truth=TileTruth.from_synth(truth, "ihc"), mask_config=config, counter=counter,
                             tissue=tissue_mask(he))
            rows.append({"name": name, **row})
            if len(images) < keep_images:
                images.append(np.concatenate([he, fake, ihc], axis=1))
    return summarise(rows), rows, images


def oracle_scores(root: Path, budget: Budget) -> dict:
    """The real IHC scored against its own frame's truth: the ceiling of Eq. 1 and the counter."""
    counter, config = make_counter("classical"), MaskConfig(closing_radius=budget.closing_radius)
    rows = []
    for _, _, ihc, truth in _test_pairs(root):
        t = TileTruth.from_synth(truth, "ihc")
        rows.append(score_tile(ihc, t, real_ihc=ihc, real_truth=t, mask_config=config, counter=counter))
    return summarise(rows)


def all_tissue_scores(root: Path) -> dict:
    """The trivial answer "all the tissue is positive" (the H&E's tissue as the mask): the Dice to beat."""
    dice, iou = zip(*(dice_iou(tissue_mask(he), t["positive_mask_he"]) for _, he, _, t in _test_pairs(root)))
    return {"dice": float(np.mean(dice)), "iou": float(np.mean(iou))}


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - start
