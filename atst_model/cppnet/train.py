"""Training CPP-Net without human annotation: synthetic tiles and pseudo-labels.

Two sources of instance labels, freely mixed:

- synthetic IHC tiles from :mod:`atst_prep.synth`, whose nucleus labels are exact;
- the user's own IHC tiles (from prep shards), labelled by the classical detector.

Crops are augmented by the eight flips/rotations of the square; targets are
computed per crop from the transformed labels, so ray directions stay right.

:func:`train_nuclei` is ``atst prep train-nuclei`` as a library call: tiles,
training, threshold calibration on held-out synthetic tiles, the checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from atst_prep.errors import ConfigError

from .losses import LossWeights, cppnet_loss
from .model import CONFIGS, CppNet, CppNetConfig, save_checkpoint
from .targets import make_targets

#: Side (px) of the held-out synthetic tiles the thresholds are chosen on, and their seed's offset from the
#: training seed (so they are never training tiles).
CALIBRATION_SIZE, CALIBRATION_SEED_OFFSET = 512, 7919


@dataclass(frozen=True)
class Tile:
    """One training image: ``image`` (C, H, W) float32 stain densities, ``labels`` (H, W) instance ids."""

    image: np.ndarray
    labels: np.ndarray
    source: str = ""


@dataclass(frozen=True)
class TrainConfig:
    """How to train; defaults suit a CPU run of a few minutes with the "small" network."""

    steps: int = 1500
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    seed: int = 0
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in {
            "steps": self.steps >= 1, "batch": self.batch >= 1, "crop": 16 <= self.crop <= 2048,
            "lr": 0 < self.lr < 1}.items() if not ok]
        if bad:
            raise ValueError(f"invalid training settings: {', '.join(bad)}")


def synthetic_tiles(n: int, *, size: int = 256, seed: int = 0, in_channels: int = 1,
                    patterns: Sequence[str] = ("membranous", "nuclear")) -> list[Tile]:
    """``n`` synthetic IHC tiles with exact nucleus labels (alternating patterns)."""
    from atst_prep.stain import dab_and_hematoxylin
    from atst_prep.synth import SynthConfig, render_pair

    tiles = []
    for i in range(n):
        pattern = patterns[i % len(patterns)]
        pair = render_pair(SynthConfig(size=size, pattern=pattern), seed * 100_003 + i)
        dab, hema = dab_and_hematoxylin(pair.ihc)
        image = np.stack([hema, dab][:in_channels])
        tiles.append(Tile(image, pair.truth["nucleus_labels_ihc"].astype(np.int32), f"synthetic:{pattern}:{i}"))
    return tiles


def pseudo_label_tiles(shard_paths: Iterable[Path], *, in_channels: int = 1, max_tiles: int | None = None,
                       counter=None) -> list[Tile]:
    """Real IHC tiles from prep shards, labelled by the classical detector (the teacher).

    Without an explicit ``counter`` the classical detector runs on the channel
    the shard's build used (hema+dab for nuclear markers), else on hema.
    """
    from atst_prep.nuclei import make_counter
    from atst_prep.shards import iter_samples, read_header

    tiles = []
    for path in shard_paths:
        teacher = counter
        if teacher is None:
            nuclei = read_header(path)["params"].get("nuclei") or {}
            channel = (nuclei.get("params") or {}).get("channel", "hema")
            teacher = make_counter("classical", channel=channel)
        for sample in iter_samples(path, arrays=("dab", "hema")):
            nuclei = teacher.detect(sample["hema"], sample["dab"])
            image = np.stack([sample["hema"], sample["dab"]][:in_channels]).astype(np.float32)
            tiles.append(Tile(image, nuclei.labels, f"pseudo:{Path(path).name}:{sample['name']}"))
            if max_tiles and len(tiles) >= max_tiles:
                return tiles
    return tiles


def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square on the last two axes."""
    a = np.rot90(a, k % 4, axes=(-2, -1))
    return a[..., ::-1] if k >= 4 else a


def sample_batch(tiles: Sequence[Tile], rng: np.random.Generator, batch: int, crop: int,
                 n_rays: int) -> dict[str, torch.Tensor]:
    """Random augmented crops and their targets, as tensors."""
    images, probs, dists, densities = [], [], [], []
    for _ in range(batch):
        tile = tiles[int(rng.integers(len(tiles)))]
        h, w = tile.labels.shape
        c = min(crop, h, w)
        y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        k = int(rng.integers(8))
        image = np.ascontiguousarray(_dihedral(tile.image[:, y:y + c, x:x + c], k))
        labels = np.ascontiguousarray(_dihedral(tile.labels[y:y + c, x:x + c], k))
        t = make_targets(labels, n_rays)
        images.append(image)
        probs.append(t["prob"][None])
        dists.append(t["dist"])
        densities.append(t["density"][None])
    stack = lambda xs: torch.from_numpy(np.stack(xs))  # noqa: E731
    return {"image": stack(images), "prob": stack(probs), "dist": stack(dists), "density": stack(densities)}


def train(model_config: CppNetConfig, tiles: Sequence[Tile], config: TrainConfig = TrainConfig(), *,
          device: str | None = None, on_step: Callable[[int, dict], None] | None = None) -> tuple[CppNet, list[dict]]:
    """Train a CPP-Net on ``tiles``; returns the model (eval mode, CPU) and the per-step losses."""
    if not tiles:
        raise ValueError("no training tiles")
    if config.crop % model_config.multiple:
        raise ValueError(f"crop {config.crop} must be a multiple of {model_config.multiple} for this network")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = CppNet(model_config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.steps, eta_min=config.lr * 0.05)
    history = []
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        batch = {k: v.to(device) for k, v in sample_batch(tiles, rng, config.batch, config.crop,
                                                          model_config.n_rays).items()}
        terms = cppnet_loss(model, model(batch["image"]), batch["prob"], batch["dist"], batch["density"], config.loss)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        sched.step()
        record = {k: float(v.detach()) for k, v in terms.items()}
        record.update(step=step, seconds=time.perf_counter() - start)
        history.append(record)
        if on_step:
            on_step(step, record)
    return model.cpu().eval(), history


def calibrate_thresholds(model: CppNet, tiles: Sequence[Tile], *, prob_grid=(0.4, 0.5, 0.6),
                         nms_grid=(0.3, 0.4, 0.5)) -> tuple[float, float, dict]:
    """Pick the probability and NMS thresholds that score best on labelled validation tiles.

    Score = mean instance F1 at IoU 0.5 minus mean relative count error; the
    network's maps are computed once per tile. Returns ``(prob, nms, scores)``.
    """
    from atst_prep.nuclei.metrics import count_error, instance_f1

    from .predict import maps_to_instances, predict_maps

    maps = [predict_maps(model, t.image, prob_floor=min(prob_grid)) for t in tiles]
    scores = {}
    for p in prob_grid:
        for n in nms_grid:
            f1, err = [], []
            for m, tile in zip(maps, tiles):
                labels, _ = maps_to_instances(m["prob"], m["dist"], prob_thresh=p, nms_thresh=n)
                f1.append(instance_f1(labels, tile.labels).f1)
                err.append(count_error(len(np.unique(labels)) - 1, len(np.unique(tile.labels)) - 1))
            scores[(p, n)] = float(np.mean(f1) - np.mean(err))
    best = max(scores, key=scores.get)
    return best[0], best[1], {f"{p}/{n}": s for (p, n), s in scores.items()}


@dataclass
class TrainedNuclei:
    """What :func:`train_nuclei` made: the checkpoint at ``path`` holds ``model`` (eval mode, CPU).

    ``model.config`` carries the calibrated thresholds when ``calibration``
    (score per ``"prob/nms"``) is not empty; ``history`` is the per-step losses.
    """

    path: Path
    model: CppNet
    history: list[dict]
    pseudo_tiles: int
    calibration: dict


def train_nuclei(out: Path, network: str = "small", config: TrainConfig = TrainConfig(), *, synthetic: int = 32,
                 synthetic_size: int = 256, shards: Path | None = None, max_pseudo: int = 64, calibrate: int = 6,
                 device: str | None = None, on_message: Callable[[str], None] | None = None,
                 on_start: Callable[[int], None] | None = None,
                 on_step: Callable[[int, dict], None] | None = None) -> TrainedNuclei:
    """Train the CPP-Net ``network`` (a name of :data:`.model.CONFIGS`) and write its checkpoint to ``out``.

    Tiles: ``synthetic`` synthetic tiles of ``synthetic_size`` px, plus with
    ``shards`` (a shard folder) at most ``max_pseudo`` of their real IHC tiles
    pseudo-labelled by the classical detector. With ``calibrate`` > 0 the
    probability and NMS thresholds are then chosen on that many held-out
    synthetic tiles (:data:`CALIBRATION_SIZE` px; :func:`calibrate_thresholds`);
    0 keeps the network's defaults. The checkpoint's metadata records every
    setting, the pseudo-tile count, the mean loss of the last 50 steps and
    the calibration scores. ``on_message(line)`` gets one line per stage,
    ``on_start(steps)`` and ``on_step(step, losses)`` report the training.
    Raises :class:`ConfigError` for an unknown ``network``.
    """
    model_config = CONFIGS.get(network)
    if model_config is None:
        raise ConfigError(f"unknown network config {network!r}; choose {', '.join(CONFIGS)}")
    say = on_message or (lambda line: None)
    channels = model_config.in_channels
    say(f"rendering {synthetic} synthetic tiles ({synthetic_size} px)")
    tiles = synthetic_tiles(synthetic, size=synthetic_size, seed=config.seed, in_channels=channels)
    if shards is not None:
        from atst_model.train.trainer import shard_paths

        pseudo = pseudo_label_tiles(shard_paths(shards), in_channels=channels, max_tiles=max_pseudo)
        say(f"{len(pseudo)} real IHC tiles pseudo-labelled by the classical detector")
        tiles += pseudo
    if on_start:
        on_start(config.steps)
    model, history = train(model_config, tiles, config, device=device, on_step=on_step)
    calibration = {}
    if calibrate:
        say(f"choosing thresholds on {calibrate} held-out synthetic tiles")
        held_out = synthetic_tiles(calibrate, size=CALIBRATION_SIZE, seed=config.seed + CALIBRATION_SEED_OFFSET,
                                   in_channels=channels)
        prob, nms, calibration = calibrate_thresholds(model, held_out)
        model.config = replace(model.config, prob_thresh=prob, nms_thresh=nms)
        say(f"thresholds: probability {prob}, NMS {nms}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tail = history[-50:]
    save_checkpoint(model, out, config_name=network, steps=config.steps, batch=config.batch, crop=config.crop,
                    lr=config.lr, seed=config.seed, synthetic_tiles=synthetic, synthetic_size=synthetic_size,
                    pseudo_tiles=len(tiles) - synthetic, final_loss=sum(r["total"] for r in tail) / len(tail),
                    calibration=calibration)
    return TrainedNuclei(out, model, history, len(tiles) - synthetic, calibration)
