"""``atst prep train-nuclei``: train the CPP-Net nucleus model without human annotation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import command, console, make_config, progress_bar, writable_folder
from .prep import app


@app.command("train-nuclei")
@command
def train_nuclei(
    out: Path = typer.Option(Path("nuclei-cppnet.pt"), "--out", help="Checkpoint to write (use it with "
                             "--counter cppnet --nuclei-weights OUT)."),
    synthetic: int = typer.Option(32, help="Synthetic IHC tiles with exact nucleus labels (both DAB patterns)."),
    synthetic_size: int = typer.Option(256, help="Side of each synthetic tile in px."),
    shards: Optional[Path] = typer.Option(None, "--shards", help="Also train on the real IHC tiles of these "
                                          "shards, labelled by the classical detector (pseudo-labels)."),
    max_pseudo: int = typer.Option(64, help="At most this many pseudo-labelled tiles."),
    config: str = typer.Option("small", help="Network size: tiny, small or base."),
    steps: int = typer.Option(1500, help="Optimiser steps."),
    batch: int = typer.Option(8, help="Crops per step."),
    crop: int = typer.Option(128, help="Crop side in px (a multiple of 2**depth)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (cosine decay to 5 %)."),
    seed: int = typer.Option(0, help="Seed for tiles, crops and initial weights."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: a GPU when there is one)."),
    calibrate: int = typer.Option(6, help="Held-out synthetic tiles (512 px) on which the probability and NMS "
                                  "thresholds are chosen after training; 0 keeps the defaults."),
) -> None:
    """Train CPP-Net (probability, 32 rays, context enhancement, density head) on synthetic tiles and pseudo-labels."""
    from atst_model.cppnet import CONFIGS, save_checkpoint
    from atst_model.cppnet.train import TrainConfig, pseudo_label_tiles, synthetic_tiles, train

    if config not in CONFIGS:
        raise typer.BadParameter(f"unknown config {config!r}; choose {', '.join(CONFIGS)}", param_hint="--config")
    model_config = CONFIGS[config]
    writable_folder(out.parent)  # before training, not after
    train_config = make_config(TrainConfig, steps=steps, batch=batch, crop=crop, lr=lr, seed=seed)
    console.print(f"rendering {synthetic} synthetic tiles ({synthetic_size} px)")
    tiles = synthetic_tiles(synthetic, size=synthetic_size, seed=seed, in_channels=model_config.in_channels)
    if shards is not None:
        from atst_model.train.trainer import shard_paths

        paths = shard_paths(shards)
        pseudo = pseudo_label_tiles(paths, in_channels=model_config.in_channels, max_tiles=max_pseudo)
        console.print(f"{len(pseudo)} real IHC tiles pseudo-labelled by the classical detector")
        tiles += pseudo
    bar = progress_bar("steps")
    task = bar.add_task("train-nuclei", total=steps, t0=time.perf_counter())
    with bar:
        def on_step(step: int, record: dict) -> None:
            bar.update(task, completed=step,
                       description=f"train-nuclei loss {record['total']:.3f}")

        model, history = train(model_config, tiles, train_config, device=device, on_step=on_step)
    calibration = {}
    if calibrate:
        from dataclasses import replace

        from atst_model.cppnet.train import calibrate_thresholds

        console.print(f"choosing thresholds on {calibrate} held-out synthetic tiles")
        held_out = synthetic_tiles(calibrate, size=512, seed=seed + 7919, in_channels=model_config.in_channels)
        prob, nms, calibration = calibrate_thresholds(model, held_out)
        model.config = replace(model.config, prob_thresh=prob, nms_thresh=nms)
        console.print(f"thresholds: probability {prob}, NMS {nms}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tail = history[-50:]
    save_checkpoint(model, out, config_name=config, steps=steps, batch=batch, crop=crop, lr=lr, seed=seed,
                    synthetic_tiles=synthetic, synthetic_size=synthetic_size, pseudo_tiles=len(tiles) - synthetic,
                    final_loss=sum(r["total"] for r in tail) / len(tail), calibration=calibration)
    typer.echo(f"nucleus model: {out}  (use: --counter cppnet --nuclei-weights {out})")
